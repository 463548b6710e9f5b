"""Whole-sequence training (``train_mode: sequence``) against RecBole's prefix samples, and
length-grouped batching."""
from collections import Counter

import numpy as np
import pytest
import torch

from recbole_etegrec.data.dataloader import LengthGroupedBatches
from recbole_etegrec.model.etegrec import ETEGRec
from tests.conftest import build


def rows_batch(loader, rows):
    """One batch of the given dataset rows, through the loader's transform (code fields added)."""
    dataset = loader._dataset
    return loader.transform(dataset, dataset[np.asarray(rows)])


def user_rows(loader, uid):
    return np.flatnonzero(loader._dataset.inter_feat["user_id"].numpy() == uid)


@pytest.fixture(scope="module")
def both_modes(tiny_config_dict):
    """Prefix and sequence loaders of one split, and one tiny model (no dropout anywhere)."""
    config_dict = {**tiny_config_dict, "MAX_ITEM_LIST_LENGTH": 200}  # one window per user
    config, (prefix, _, _) = build("ETEGRec", {**config_dict, "train_mode": "prefix"})
    _, (sequence, _, _) = build("ETEGRec", {**config_dict, "train_mode": "sequence"})
    torch.manual_seed(0)
    model = ETEGRec(config, prefix._dataset).eval()
    prefix.set_code_table(model.code_table.codes)
    sequence.set_code_table(model.code_table.codes)
    # the user with the shortest training sequence keeps the test fast
    uid = int(torch.bincount(prefix._dataset.inter_feat["user_id"]).masked_fill_(
        torch.bincount(prefix._dataset.inter_feat["user_id"]) == 0, 10**9).argmin())
    return model, prefix, sequence, uid


@pytest.mark.parametrize("phase", ["rec", "id"])
def test_sequence_row_equals_the_sum_of_its_prefixes(both_modes, phase):
    """Summed over a user's targets, sequence-mode losses equal the prefix-mode ones: the same
    states, the same positions, the same logits."""
    model, prefix, sequence, uid = both_modes
    model.set_phase(phase, align=True)
    seq_rows, pre_rows = user_rows(sequence, uid), user_rows(prefix, uid)
    assert len(seq_rows) == 1 and len(pre_rows) >= 5
    with torch.no_grad():
        seq = rows_batch(sequence, seq_rows)
        n_targets = int(seq["boundary_mask"].sum())
        assert n_targets == len(pre_rows)
        seq_losses = model.calculate_loss(seq)
        # main loss and SIA are means over targets: compare sums against one prefix per batch
        singles = [model.calculate_loss(rows_batch(prefix, [row])) for row in pre_rows]
        for term in (0, 1):
            summed = sum(float(losses[term]) for losses in singles)
            assert float(seq_losses[term]) * n_targets == pytest.approx(summed, rel=1e-5, abs=1e-5)
        # PSA contrasts the targets of one batch: all the user's prefixes in one (left-padded) batch
        together = model.calculate_loss(rows_batch(prefix, pre_rows))
        for a, b in zip(seq_losses, together):
            assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-6)
    model.set_phase("rec", align=True)


def test_boundary_states_are_the_prefix_last_states(both_modes):
    model, prefix, sequence, uid = both_modes
    pre_rows = user_rows(prefix, uid)
    with torch.no_grad():
        seq = rows_batch(sequence, user_rows(sequence, uid))
        states, items = model.boundary_states(model.forward(seq), seq)
        for k, row in enumerate(pre_rows):
            one = rows_batch(prefix, [row])
            last = model.forward(one)[0, int(one["seq_end_position"][0])]
            assert torch.allclose(states[k], last, atol=1e-5)
            assert int(items[k]) == int(one["item_id"][0])


@pytest.mark.parametrize("overlap", [0.0, 0.5, None])  # None: a checkpoint config from before the key
def test_windows_cover_every_training_target_once(tiny_config_dict, overlap):
    """A history cap shorter than the users' sequences splits them into windows (disjoint, or
    overlapping by half): the supervised (user, item) pairs of sequence mode are exactly RecBole's
    prefix targets, and with overlap every target after a user's first window has >= 3 items of
    context (7 - stride 4)."""
    config_dict = {**tiny_config_dict, "MAX_ITEM_LIST_LENGTH": 7, "window_overlap": overlap}
    _, (prefix, _, _) = build("ETEGRec", {**config_dict, "train_mode": "prefix"})
    _, (sequence, _, _) = build("ETEGRec", {**config_dict, "train_mode": "sequence"})
    codes = torch.zeros(prefix._dataset.item_num, 4, dtype=torch.long)
    sequence.set_code_table(codes)
    feat = prefix._dataset.inter_feat
    expected = Counter(zip(feat["user_id"].tolist(), feat["item_id"].tolist()))
    got, short_context = Counter(), 0
    for batch in sequence:
        mask = batch["boundary_mask"]
        users = batch["user_id"].unsqueeze(1).expand_as(mask)[mask]
        got.update(zip(users.tolist(), batch["boundary_items"][mask].tolist()))
        slot = torch.arange(mask.shape[1]) - (mask.shape[1] - batch["item_length"].unsqueeze(1))  # context - 1
        short_context += int((mask & (slot < 2) & (batch["item_length"] == 7).unsqueeze(1)).sum())
    assert got == expected
    rows = len(sequence._dataset)
    assert rows < len(prefix._dataset) / (3 if overlap else 5)  # one row per window, not per target
    if overlap:  # full windows (7 items) train no target with fewer than 3 items of context
        assert short_context == 0


def test_length_grouping_yields_every_sample_once_and_pads_little():
    lengths = torch.randint(1, 21, (5000,), generator=torch.Generator().manual_seed(0))
    sampler = LengthGroupedBatches(lengths, 64, True, torch.Generator().manual_seed(1), chunk_batches=16)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(5000))
        padded = sum(len(b) * int(lengths[b].max()) for b in batches)
        assert padded / int(lengths.sum()) <= 1.1
    assert epochs[0] != epochs[1]  # still shuffled from epoch to epoch
    plain = [list(range(i, min(i + 64, 5000))) for i in range(0, 5000, 64)]
    assert sum(len(b) * int(lengths[b].max()) for b in plain) / int(lengths.sum()) > 1.5


def test_grouped_evaluation_gives_every_user_the_same_items(tiny_config_dict):
    """Sorting evaluation users by length changes batch composition (and padding), not results."""
    from recbole_etegrec.trainer.etegrec_trainer import ETEGRecTrainer

    model, results, top, scores = None, [], [], []
    for grouped in (True, False):
        config, (train, valid, _) = build("ETEGRec", {**tiny_config_dict, "group_by_length": grouped,
                                                      "finetune_epochs": 0})
        if model is None:  # one (untrained) model, evaluated through both loaders
            torch.manual_seed(0)
            model = ETEGRec(config, train._dataset).eval()
        valid.set_code_table(model.code_table.codes)
        users, user_scores = {}, {}
        with torch.no_grad():
            for batch, *_ in valid:
                best = model.full_sort_predict(batch).topk(10)
                users.update(zip(batch["user_id"].tolist(), best.indices.tolist()))
                user_scores.update(zip(batch["user_id"].tolist(), best.values))
        top.append(users)
        scores.append(user_scores)
        results.append(ETEGRecTrainer(config, model).evaluate(valid, load_best_model=False))
    assert top[0] == top[1] and len(top[0]) == len(valid._dataset)
    assert all(torch.allclose(scores[0][u], scores[1][u], atol=1e-5) for u in scores[0])
    assert dict(results[0]) == dict(results[1])
    assert len({tuple(items) for items in top[0].values()}) > 1  # users get different lists
