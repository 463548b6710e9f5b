"""Code-sequence dataloaders: RecBole's loaders with one more step in ``transform`` and batches
grouped by length.

Each batch gains, from ``item_id_list`` / ``item_length`` / the target ``item_id``:

    code_input        [B, 4*L + 4]  history codes left-padded with -1, then the 4 target codes
    code_attention    [B, 4*L + 4]  1 where code_input is a real code
    seq_end_position  [B]           index of the last history code (4*L - 1 for every row)
    target_codes      [B, 4]
    target_positions  [B, 4]        4*L .. 4*L + 3
    boundary_items    [B, L]        item predicted at boundary k (the item in slot k + 1; slot L is the target)
    boundary_mask     [B, L]        which boundaries are supervised

L is the longest history in the batch (not MAX_ITEM_LIST_LENGTH). Left padding puts every
history's end at the same index, which the decoder-only model and beam search rely on. Boundary k
is the state at position 4*k + 3, the last code of history slot k, which (causally) predicts the
item in slot k + 1. ``supervise="last"`` marks only the last boundary (one target per row: RecBole's
prefix samples); ``"all"`` marks every boundary after a real item, so one row trains on every next
item of its sequence in one causal pass (``train_mode: sequence``).

All three loaders share one ``CodeTableSlot``: ``set_code_table`` on any of them re-tokenizes
the train, valid and test batches together.
"""
import math
from logging import getLogger
from typing import TYPE_CHECKING, Tuple

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader, NegSampleEvalDataLoader, TrainDataLoader

if TYPE_CHECKING:
    from recbole.data.interaction import Interaction

TRAIN_MODES = ("sequence", "prefix")


class CodeTableSlot:
    """The code table currently in use, shared by the loaders of one data split."""

    def __init__(self):
        self.codes = None  # LongTensor [n_items, code_length]


def add_code_fields(interaction, codes, item_field, list_field, length_field, supervise="last") -> "Interaction":
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
    target_item = interaction[item_field]
    target = codes[target_item]
    hist_len = longest * n_codes
    if supervise == "all":  # boundary k is supervised when slot k holds a real item
        mask = valid
        if SUPERVISED_FIELD in interaction:  # overlapping windows: only the row's own targets
            mask = mask & (torch.arange(longest) >= longest - interaction[SUPERVISED_FIELD].unsqueeze(1))
    else:  # the target only
        mask = torch.zeros_like(valid)
        mask[:, -1] = lengths > 0
    fields = {
        "code_input": torch.cat([hist, target], dim=1),
        "seq_end_position": torch.full((batch,), hist_len - 1, dtype=torch.long),
        "target_codes": target,
        "target_positions": torch.arange(hist_len, hist_len + n_codes).expand(batch, -1).clone(),
        "boundary_items": torch.where(mask, torch.cat([aligned[:, 1:], target_item.unsqueeze(1)], 1), 0),
        "boundary_mask": mask,
    }
    fields["code_attention"] = (fields["code_input"] >= 0).long()
    for key, value in fields.items():
        interaction.interaction[key] = value
    return interaction


SUPERVISED_FIELD = "supervised_targets"  # sequence rows: how many of the row's last boundaries are trained


def sequence_rows(dataset, max_len, stride=None) -> Tuple[np.ndarray, np.ndarray]:
    """RecBole's prefix samples that, together, hold every training target once:
    ``(row indices, supervised targets per row)``.

    RecBole's sequential dataset has one row per (history <= ``max_len`` items, target), in time
    order within each user; a row ends in its target and holds up to ``max_len`` targets (its
    history items are the earlier ones). Rows are taken from each user's last target backwards,
    every ``stride`` targets (``max_len``: disjoint windows). Each row trains its last ``stride``
    targets (the earlier ones belong to the row before it, which sees them with more context);
    a user's earliest row trains all of its targets. So every target is trained exactly once,
    and with ``stride < max_len`` every target but the first ``stride`` of a user has at least
    ``max_len - stride`` items of context.
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in 1..{max_len}, got {stride}")
    uid = dataset.inter_feat[dataset.uid_field].numpy()
    n = len(uid)
    order = np.argsort(uid, kind="stable")  # stable: keeps each user's rows in time order
    sorted_uid = uid[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_uid[1:] != sorted_uid[:-1]
    first = np.flatnonzero(starts)
    sizes = np.diff(np.append(first, n))
    rank = np.arange(n) - np.repeat(first, sizes)  # position of the row within its user
    from_end = np.repeat(sizes, sizes) - 1 - rank
    chosen = from_end % stride == 0
    earliest = from_end + stride > np.repeat(sizes, sizes) - 1  # no chosen row before it
    supervised = np.where(earliest, max_len, stride)
    keep = np.argsort(order[chosen], kind="stable")
    return order[chosen][keep], supervised[chosen][keep]


def window_stride(max_len, overlap) -> int:
    """Targets between consecutive windows for a ``window_overlap`` fraction (0: disjoint)."""
    return max(1, min(max_len, round(max_len * (1.0 - overlap))))


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of similar length, so a batch pads to little more than its real positions.

    Training (``shuffle``): shuffle all samples, sort by length inside chunks of ``chunk_batches``
    batches, cut the chunks into batches, shuffle the batches. Every sample is yielded once per
    epoch, and batch composition still changes from epoch to epoch. Evaluation: one global sort,
    in a fixed order; per-user metrics do not depend on which batch a user is in.
    """

    def __init__(self, lengths, batch_size, shuffle, generator, chunk_batches):
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator
        self.chunk = batch_size * chunk_batches if shuffle else len(self.lengths)

    def __iter__(self):
        n = len(self.lengths)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        batches = []
        for start in range(0, n, max(self.chunk, 1)):
            chunk = order[start:start + self.chunk]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
            batches.extend(chunk.split(self.batch_size))
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator)]
        return (batch.tolist() for batch in batches)

    def __len__(self):
        return math.ceil(len(self.lengths) / self.batch_size)


class _LengthGroupedDataLoader(torch.utils.data.DataLoader):
    """Sits between RecBole's ``AbstractDataLoader`` and torch's ``DataLoader`` in the MRO: RecBole
    passes its batch size, shuffle flag and generator here, and we hand torch a length-grouped batch
    sampler instead. Under DDP (RecBole passes a DistributedSampler) RecBole's batching is kept."""

    def __init__(self, dataset, batch_size, shuffle=False, sampler=None, generator=None, **kwargs):
        config = self.config
        if config["group_by_length"] and sampler is None:
            lengths = self._dataset.inter_feat[config["ITEM_LIST_LENGTH_FIELD"]]
            batches = LengthGroupedBatches(lengths, batch_size, shuffle, generator, config["length_group_batches"])
            super().__init__(dataset=dataset, batch_sampler=batches, generator=generator, **kwargs)
            return
        if config["group_by_length"]:
            getLogger().info("group_by_length is off under DDP: RecBole's DistributedSampler batches the data")
        super().__init__(dataset=dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                         generator=generator, **kwargs)


class _CodeSeqTransform:
    """RecBole's configured transform, followed by ``add_code_fields``."""

    def __init__(self, base, slot, config, supervise):
        self.base, self.slot, self.supervise = base, slot, supervise
        self.item_field = config["ITEM_ID_FIELD"]
        self.list_field = self.item_field + config["LIST_SUFFIX"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]

    def __call__(self, dataset, interaction):
        interaction = self.base(dataset, interaction)
        return add_code_fields(interaction, self.slot.codes, self.item_field, self.list_field,
                               self.length_field, self.supervise)


class _CodeSeqMixin:
    def _use_slot(self, config, slot, supervise="last"):
        self.code_slot = slot if slot is not None else CodeTableSlot()
        self.transform = _CodeSeqTransform(self.transform, self.code_slot, config, supervise)

    def set_code_table(self, codes):
        """Swap the item -> codes table for every loader sharing this slot (train, valid, test)."""
        self.code_slot.codes = codes.detach().cpu().long()


class CodeSeqTrainDataLoader(_CodeSeqMixin, TrainDataLoader, _LengthGroupedDataLoader):
    """``train_mode: prefix``: RecBole's prefix samples, one target each. ``sequence``: one row per
    user window (``sequence_rows``), every next item a target."""

    def __init__(self, config, dataset, sampler, shuffle=False, slot=None, train_mode="prefix"):
        if train_mode == "sequence":
            max_len = config["MAX_ITEM_LIST_LENGTH"]
            overlap = config["window_overlap"]
            if overlap is None:  # a checkpoint's config from before the key: it trained disjoint windows
                overlap = 0.0
            rows, supervised = sequence_rows(dataset, max_len, window_stride(max_len, overlap))
            dataset = dataset.copy(dataset.inter_feat[rows])
            dataset.inter_feat.interaction[SUPERVISED_FIELD] = torch.as_tensor(supervised, dtype=torch.long)
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self.train_mode = train_mode
        self._use_slot(config, slot, supervise="all" if train_mode == "sequence" else "last")


class CodeSeqFullSortEvalDataLoader(_CodeSeqMixin, FullSortEvalDataLoader, _LengthGroupedDataLoader):
    def __init__(self, config, dataset, sampler, shuffle=False, slot=None):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self._use_slot(config, slot)


class UserBatchNegSampleEvalDataLoader(NegSampleEvalDataLoader):
    """RecBole's sampled-evaluation loader (uni100, pop100, ...) with ``eval_batch_size`` counted in
    users, as the code models' full ranking counts it, instead of (history, candidate) rows: RecBole
    would hand ``predict`` 256 // 101 = 2 users a batch, and the code models' per-call cost (code
    fields, one decoder pass per level) would dominate. ``predict`` splits a batch into decoder chunks."""

    def _init_batch_size_and_step(self):
        if self.neg_sample_args["distribution"] == "none" or self.neg_sample_args["sample_num"] == "none":
            return super()._init_batch_size_and_step()
        rows = sorted(self.uid2items_num[self.uid_list] * self.times, reverse=True)
        self.step = max(1, min(self.config["eval_batch_size"], len(rows)))
        self.set_batch_size(int(sum(rows[:self.step])))  # rows of the largest batch

