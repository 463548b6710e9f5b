"""What every generative model over item codes shares (ETEGRec, TIGER): the code table in the
checkpoint, and RecBole's full-ranking interface on top of beam search."""
from typing import TYPE_CHECKING, NoReturn, Tuple

import torch

from recbole_etegrec.data.dataloader import add_code_fields
from recbole_etegrec.decoding import scores_to_item_matrix

if TYPE_CHECKING:
    from recbole.data.interaction import Interaction


class CodeSequenceMixin:
    """Put before ``SequentialRecommender``; the model defines ``generate``, ``code_table``,
    ``chunk_size`` and ``use_kv_cache``."""

    uses_item_codes = True  # data_preparation gives these models code-sequence loaders
    train_modes = ("prefix",)  # train_mode values the model supports (ETEGRec adds "sequence")

    def other_parameter(self) -> dict:
        return {"code_table": self.code_table.state_dict()}

    def load_other_parameter(self, para) -> None:
        if para and "code_table" in para:
            self.code_table = type(self.code_table).from_state_dict(para["code_table"])

    def with_code_fields(self, interaction) -> "Interaction":
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

    def predict(self, interaction) -> NoReturn:
        raise NotImplementedError(f"{type(self).__name__} ranks by beam search: use full ranking "
                                  "(eval_args.mode: full)")

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
