"""Trie-constrained beam search over an item's code tuple, for any incremental decoder.

A decoder is two callables (ETEGRec's LLaMA and TIGER's T5 both provide them):

    start()                          -> (log_probs [B, V] for code 0, state)
    step(state, parents, codes, lvl) -> (log_probs [B*K, V] for code lvl, state)

``parents`` [B*K] says which row of the previous state each beam extends (the decoder reorders
or expands its KV cache with it: at the first step it expands B rows to B*K); ``codes`` [B*K] are
the codes just chosen, to be fed as the next input. ``parents=None`` keeps the rows as they are
(the likelihood path, ``scoring.py``: no copy of the cache). Only one new token per beam goes through
the model per step; the history is never re-run.

Every step masks codes that lead to no real item (``CodeTable.allowed_next``), so all finished
beams are items: unlike unconstrained decoding, no top-k slot is wasted on an invalid ID.
"""
from typing import NamedTuple

import torch


class BeamOutput(NamedTuple):
    codes: torch.Tensor   # [B, K, L] code tuples, best first
    scores: torch.Tensor  # [B, K] summed log-probabilities (-inf for beams that found no item)
    items: torch.Tensor   # [B, K] item ids (-1 where the beam is dead)


@torch.no_grad()
def beam_search(start, step, code_table, num_beams, code_length=None) -> BeamOutput:
    code_length = code_length or code_table.code_length
    log_probs, state = start()
    batch, vocab = log_probs.shape
    device = log_probs.device
    k = num_beams

    allowed = code_table.allowed_next(torch.zeros(batch, 0, dtype=torch.long, device=device))
    log_probs = log_probs.float().masked_fill(~allowed, float("-inf"))
    # fewer than K valid first codes: pad with dead beams so every row keeps K beams
    take = min(k, vocab)
    scores, first = log_probs.topk(take, dim=-1)
    if take < k:
        scores = torch.cat([scores, scores.new_full((batch, k - take), float("-inf"))], dim=1)
        first = torch.cat([first, first.new_zeros(batch, k - take)], dim=1)
    beams = first.unsqueeze(-1)  # [B, K, 1]
    parents = torch.arange(batch, device=device).repeat_interleave(k)
    row_offset = (torch.arange(batch, device=device) * k).unsqueeze(1)

    for level in range(1, code_length):
        log_probs, state = step(state, parents, beams[:, :, -1].reshape(-1), level)
        allowed = code_table.allowed_next(beams.reshape(batch * k, level))
        log_probs = log_probs.float().masked_fill(~allowed, float("-inf"))
        candidates = (scores.reshape(-1, 1) + log_probs).reshape(batch, k * vocab)
        scores, index = candidates.topk(k, dim=-1)
        parent, code = index // vocab, index % vocab
        beams = torch.cat([beams.gather(1, parent.unsqueeze(-1).expand(-1, -1, level)),
                           code.unsqueeze(-1)], dim=-1)
        parents = (row_offset + parent).reshape(-1)

    items = code_table.lookup(beams.reshape(-1, code_length)).reshape(batch, k)
    items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
    return BeamOutput(beams, scores, items)


def scores_to_item_matrix(beams, n_items) -> torch.Tensor:
    """RecBole's full-ranking score matrix [B, n_items]: beam scores at the generated items,
    -inf everywhere else (so RecBole's evaluator ranks exactly the beam order)."""
    out = torch.full((beams.items.shape[0], n_items), float("-inf"), device=beams.scores.device)
    alive = beams.items >= 0
    rows = torch.arange(beams.items.shape[0], device=out.device).unsqueeze(1).expand_as(beams.items)
    out[rows[alive], beams.items[alive]] = beams.scores[alive]
    return out
