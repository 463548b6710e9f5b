"""Likelihood scoring of the code models (``predict``): it ranks by the same model as the beam
search, it does not depend on how rows are batched, and RecBole's sampled evaluation runs on it."""
import math

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_etegrec.model.etegrec import ETEGRec
from recbole_etegrec.model.tiger import TIGER
from recbole_etegrec.quick_start import run
from tests.conftest import build
from tests.test_tiger import TINY_T5

MODELS = {"ETEGRec": (ETEGRec, {}), "TIGER": (TIGER, {**TINY_T5, "dropout_rate": 0.0})}


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request, tiny_config_dict):
    name = request.param
    model_class, extra = MODELS[name]
    torch.manual_seed(0)
    config, (train, _, _) = build(name, {**tiny_config_dict, **extra})
    model = model_class(config, train._dataset).eval()
    train.set_code_table(model.code_table.codes)
    return model, next(iter(train))


def beam_rows(model, batch, users, use_cache):
    """The beam search's items and scores for the first ``users`` rows, and the RecBole rows
    (history, item) that ask ``predict`` for the same items."""
    codes, attention = model.history(batch)
    beams = model.generate(codes[:users], attention[:users], num_beams=10, use_cache=use_cache)
    parents = torch.arange(users).repeat_interleave(10)
    rows = Interaction({"item_id_list": batch["item_id_list"][parents], "item_length": batch["item_length"][parents],
                        "item_id": beams.items.reshape(-1)})
    return beams, rows


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_scores_equal_teacher_forced_scores(setup, use_cache):
    model, batch = setup
    model.use_kv_cache = use_cache
    beams, rows = beam_rows(model, batch, 4, use_cache)
    assert (beams.items > 0).all()
    scores = model.predict(rows)
    assert torch.allclose(scores, beams.scores.reshape(-1), atol=1e-4), (scores - beams.scores.reshape(-1)).abs().max()


def test_scores_do_not_depend_on_batching(setup):
    """Rows in another order, and decoded a few candidates at a time (a history split across
    chunks is encoded in each), score the same."""
    model, batch = setup
    model.use_kv_cache = True
    _, rows = beam_rows(model, batch, 4, True)
    whole = model.predict(rows)
    perm = torch.randperm(len(whole), generator=torch.Generator().manual_seed(0))
    chunk_size, num_beams = model.chunk_size, model.num_beams
    model.chunk_size, model.num_beams = 1, 7  # 7 candidates per decoder pass
    try:
        shuffled = model.predict(rows[perm])
    finally:
        model.chunk_size, model.num_beams = chunk_size, num_beams
    assert torch.allclose(shuffled, whole[perm], atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sampled_evaluation_end_to_end(name, tiny_config_dict):
    """RecBole's uni100 evaluation through the plugin's pipeline: every metric RecBole reports for
    the sampled ranking, from ``predict``'s likelihood scores."""
    extra = {**MODELS[name][1], "epochs": 1, "debug_samples": 25, "metrics": ["Hit", "MRR", "NDCG"],
             "topk": [5, 10], "valid_metric": "NDCG@10",
             "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni100"}}
    if name == "ETEGRec":
        extra.update({"cycle": 1, "finetune_epochs": 0, "warm_epoch": 1})
    result = run(name, "ml-100k", config_dict={**tiny_config_dict, **extra})
    test = result["test_result"]
    assert set(test) == {f"{m}@{k}" for m in ("hit", "mrr", "ndcg") for k in (5, 10)}
    assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in test.values())
    assert test["hit@5"] <= test["hit@10"] and test["mrr@10"] <= test["hit@10"]


def test_sampled_loader_batches_count_users(tiny_config_dict):
    """Under uni100 the code models' ``eval_batch_size`` counts users, as in full ranking: each batch
    holds that many users with all their 101 rows (RecBole's count of rows would give 64 // 101 = 1)."""
    uni100 = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni100"}
    config, (_, _, test) = build("ETEGRec", {**tiny_config_dict, "eval_batch_size": 16, "eval_args": uni100})
    users, batches = [], 0
    for interaction, _, _, _ in test:
        batch_users = torch.unique(interaction["user_id"])
        assert len(batch_users) <= 16 and len(interaction) == 101 * len(batch_users)
        users.append(batch_users)
        batches += 1
    users = torch.cat(users)
    tested = torch.unique(test._dataset.inter_feat["user_id"])
    assert len(users) == len(torch.unique(users)) == len(tested)  # every tested user once
    assert batches == math.ceil(len(tested) / 16)
