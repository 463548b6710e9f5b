"""Code-sequence dataloaders: RecBole's loaders with one more step in ``transform``.

Each batch gains, from ``item_id_list`` / ``item_length`` / the target ``item_id``:

    code_input        [B, 4*L + 4]  history codes left-padded with -1, then the 4 target codes
    code_attention    [B, 4*L + 4]  1 where code_input is a real code
    seq_end_position  [B]           index of the last history code (4*L - 1 for every row)
    target_codes      [B, 4]
    target_positions  [B, 4]        4*L .. 4*L + 3

L is the longest history in the batch (not MAX_ITEM_LIST_LENGTH): Amazon users average ~8 items,
so padding to 20 would waste more than half of every forward pass. Left padding puts every
history's end at the same index, which the decoder-only model and beam search rely on.
All three loaders share one ``CodeTableSlot``: ``set_code_table`` on any of them re-tokenizes
the train, valid and test batches together.
"""
import torch
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader


class CodeTableSlot:
    """The code table currently in use, shared by the loaders of one data split."""

    def __init__(self):
        self.codes = None  # LongTensor [n_items, code_length]


def add_code_fields(interaction, codes, item_field, list_field, length_field):
    if codes is None:
        raise RuntimeError("no code table set on the loaders: call loader.set_code_table(codes) first")
    items, lengths = interaction[list_field], interaction[length_field]
    batch, n_codes = items.shape[0], codes.shape[1]
    longest = max(int(lengths.max()), 1)
    # right-align each history: slot j holds the (len - longest + j)-th item, or padding
    offset = torch.arange(longest).unsqueeze(0) + (lengths.unsqueeze(1) - longest)
    valid = offset >= 0
    aligned = torch.where(valid, items.gather(1, offset.clamp(min=0)), torch.zeros_like(offset))
    hist = codes[aligned]  # [B, longest, n_codes]
    hist = torch.where(valid.unsqueeze(-1), hist, torch.full_like(hist, -1)).reshape(batch, -1)
    target = codes[interaction[item_field]]
    hist_len = longest * n_codes
    fields = {
        "code_input": torch.cat([hist, target], dim=1),
        "seq_end_position": torch.full((batch,), hist_len - 1, dtype=torch.long),
        "target_codes": target,
        "target_positions": torch.arange(hist_len, hist_len + n_codes).expand(batch, -1).clone(),
    }
    fields["code_attention"] = (fields["code_input"] >= 0).long()
    for key, value in fields.items():
        interaction.interaction[key] = value
    return interaction


class _CodeSeqTransform:
    """RecBole's configured transform, followed by ``add_code_fields``."""

    def __init__(self, base, slot, config):
        self.base, self.slot = base, slot
        self.item_field = config["ITEM_ID_FIELD"]
        self.list_field = self.item_field + config["LIST_SUFFIX"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]

    def __call__(self, dataset, interaction):
        interaction = self.base(dataset, interaction)
        return add_code_fields(
            interaction, self.slot.codes, self.item_field, self.list_field, self.length_field
        )


class _CodeSeqMixin:
    def _use_slot(self, config, slot):
        self.code_slot = slot if slot is not None else CodeTableSlot()
        self.transform = _CodeSeqTransform(self.transform, self.code_slot, config)

    def set_code_table(self, codes):
        """Swap the item -> codes table for every loader sharing this slot (train, valid, test)."""
        self.code_slot.codes = codes.detach().cpu().long()


class CodeSeqTrainDataLoader(_CodeSeqMixin, TrainDataLoader):
    def __init__(self, config, dataset, sampler, shuffle=False, slot=None):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self._use_slot(config, slot)


class CodeSeqFullSortEvalDataLoader(_CodeSeqMixin, FullSortEvalDataLoader):
    def __init__(self, config, dataset, sampler, shuffle=False, slot=None):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self._use_slot(config, slot)
