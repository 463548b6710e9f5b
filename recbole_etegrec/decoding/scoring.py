"""Teacher-forced likelihood of given items, over the same decoder protocol as the beam search.

    code_scores(start, step, codes, parents) -> [N] summed code log-probabilities

``codes`` [N, L] are the candidates' code tuples and ``parents`` [N] the history row (of the
decoder's ``start``) each candidate continues. ``start`` encodes every history once; the first
``step`` expands the decoder state from histories to candidates (as the beam search expands B rows
to B*K beams), and each later step feeds one more candidate code. The per-level log-probabilities
are the ones the beam search ranks by, unrenormalised after its trie mask (a real item's codes
are never masked), so a returned beam's score equals the teacher-forced score of its item: the
two paths rank by the same model (tests/test_scoring.py).
"""
import torch


@torch.no_grad()
def code_scores(start, step, codes, parents) -> torch.Tensor:
    log_probs, state = start()
    rows = torch.arange(codes.shape[0], device=codes.device)
    scores = log_probs.float()[parents, codes[:, 0]]
    for level in range(1, codes.shape[1]):
        # rows keep their order after the expansion: None spares the decoder a copy of its cache
        log_probs, state = step(state, parents if level == 1 else None, codes[:, level - 1], level)
        scores = scores + log_probs.float()[rows, codes[:, level]]
    return scores
