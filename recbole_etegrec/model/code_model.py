"""What every generative model over item codes shares (ETEGRec, TIGER): the code table in the
checkpoint, RecBole's full-ranking interface on top of beam search, and its ``predict`` (score
given (history, item) rows: sampled evaluation, re-ranking) as the teacher-forced likelihood of
the item's codes."""
from typing import Tuple

import torch
from recbole.data.interaction import Interaction

from recbole_etegrec.data.dataloader import add_code_fields
from recbole_etegrec.decoding import BeamOutput, beam_search, code_scores, scores_to_item_matrix


class CodeSequenceMixin:
    """Put before ``SequentialRecommender``; the model defines ``decoder`` (the start/step protocol
    of ``recbole_etegrec.decoding``), ``code_table``, ``num_beams``, ``chunk_size`` and ``use_kv_cache``."""

    uses_item_codes = True  # data_preparation gives these models code-sequence loaders
    train_modes = ("prefix",)  # train_mode values the model supports (ETEGRec adds "sequence")

    def other_parameter(self) -> dict:
        return {"code_table": self.code_table.state_dict()}

    def load_other_parameter(self, para) -> None:
        if para and "code_table" in para:
            self.code_table = type(self.code_table).from_state_dict(para["code_table"])

    def with_code_fields(self, interaction) -> Interaction:
        """``interaction`` with the code-sequence fields, built from this model's code table exactly
        as the code-sequence loaders build them. Rows read straight from a dataset lack them:
        RecBole's ``case_study.full_sort_topk`` feeds ``dataset[index]`` to ``full_sort_predict``."""
        if "code_input" in interaction:
            return interaction
        device = interaction[self.ITEM_ID].device
        return add_code_fields(interaction.to("cpu"), self.code_table.codes, self.ITEM_ID, self.ITEM_SEQ,
                               self.ITEM_SEQ_LEN).to(device)

    def history(self, interaction) -> Tuple[torch.Tensor, torch.Tensor]:
        """The history part of the code sequences (the same length for every row: left padding)."""
        interaction = self.with_code_fields(interaction)
        end = int(interaction["seq_end_position"][0]) + 1
        return interaction["code_input"][:, :end], interaction["code_attention"][:, :end]

    @torch.no_grad()
    def generate(self, codes, attention, num_beams=None, use_cache=True) -> BeamOutput:
        """Trie-constrained beam search for a batch of histories (left-padded, history only)."""
        start, step = self.decoder(codes, attention, use_cache=use_cache)
        return beam_search(start, step, self.code_table, num_beams or self.num_beams, self.code_length)

    @torch.no_grad()
    def predict(self, interaction) -> torch.Tensor:
        """RecBole's pointwise scores [N] for (history, item) rows: the summed log-probability of
        the item's codes given the history (``score_items``). Rows sharing a history (RecBole's
        sampled evaluation repeats it for the positive and every negative) encode it once."""
        seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        histories, parents = torch.unique(torch.cat([seq, lengths.unsqueeze(1)], dim=1), dim=0,
                                          return_inverse=True)
        return self.score_items(histories[:, :-1], histories[:, -1], parents, interaction[self.ITEM_ID])

    @torch.no_grad()
    def score_items(self, item_seq, item_seq_len, parents, items) -> torch.Tensor:
        """Scores [N] of ``items`` [N] (internal ids) after history ``parents`` [N], a row of
        ``item_seq`` [U, max_len] / ``item_seq_len`` [U] (RecBole's right-padded history fields).
        Candidates go through the decoder ``chunk_size * num_beams`` at a time, the rows one beam
        search batch holds, each chunk with the histories it needs."""
        device = items.device
        # a history's candidates contiguous, histories by length: a chunk pads to its longest history
        order = torch.argsort(item_seq_len[parents] * item_seq.shape[0] + parents, stable=True)
        scores = torch.empty(items.shape[0], dtype=torch.float, device=device)
        table = self.code_table.codes.to(device)
        cap = max(1, self.chunk_size * self.num_beams)
        for begin in range(0, order.shape[0], cap):
            rows = order[begin:begin + cap]
            needed, local = torch.unique(parents[rows], return_inverse=True)
            inter = Interaction({self.ITEM_SEQ: item_seq[needed], self.ITEM_SEQ_LEN: item_seq_len[needed],
                                 self.ITEM_ID: torch.zeros_like(needed)})  # the target is not read
            codes, attention = self.history(inter)
            start, step = self.decoder(codes, attention, use_cache=self.use_kv_cache)
            scores[rows] = code_scores(start, step, table[items[rows]], local)
        return scores

    @torch.no_grad()
    def full_sort_predict(self, interaction) -> torch.Tensor:
        """RecBole's [B, n_items] scores: beam scores at generated items, -inf elsewhere."""
        codes, attention = self.history(interaction)
        scores = []
        for chunk in range(0, codes.shape[0], self.chunk_size):
            sl = slice(chunk, chunk + self.chunk_size)
            beams = self.generate(codes[sl], attention[sl], use_cache=self.use_kv_cache)
            scores.append(scores_to_item_matrix(beams, self.n_items))
        return torch.cat(scores)
