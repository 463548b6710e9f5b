"""TIGER: valid-only beams, KV-cached == uncached decoding, exact beam search, training, end to end."""
import math

import pytest
import torch

from recbole_etegrec.model.tiger import TIGER
from recbole_etegrec.quick_start import run
from recbole_etegrec.tokenizer.code_table import CodeTable
from recbole_etegrec.trainer.optim import lr_factor
from tests.conftest import build

TINY_T5 = {"d_model": 16, "d_kv": 8, "num_heads": 2, "d_ff": 32, "num_encoder_layers": 1,
           "num_decoder_layers": 1, "learning_rate": 0.003, "lr_scheduler": "constant"}


@pytest.fixture(scope="module")
def setup(tiny_config_dict):
    torch.manual_seed(0)
    config, (train, valid, test) = build("TIGER", {**tiny_config_dict, **TINY_T5, "dropout_rate": 0.0})
    model = TIGER(config, train._dataset)
    train.set_code_table(model.code_table.codes)
    batch = next(iter(train))
    return config, model, batch


def history(batch, rows):
    end = int(batch["seq_end_position"][0]) + 1
    return batch["code_input"][:rows, :end], batch["code_attention"][:rows, :end]


def test_no_rqvae_submodule_and_code_table_saved(setup):
    _, model, _ = setup
    assert all(not n.startswith("tokenizer") for n, _ in model.named_modules())
    restored = CodeTable.from_state_dict(model.other_parameter()["code_table"])
    assert torch.equal(restored.codes, model.code_table.codes)


def test_beam_search_returns_valid_items_only(setup):
    _, model, batch = setup
    model.eval()
    codes, att = history(batch, 6)
    out = model.generate(codes, att, num_beams=10)
    assert out.items.shape == (6, 10) and (out.items > 0).all()
    # every beam's codes are exactly its item's codes, best first
    assert torch.equal(model.code_table.codes[out.items.reshape(-1)], out.codes.reshape(-1, 4))
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    scores = model.full_sort_predict(batch)
    assert scores.shape == (batch["code_input"].shape[0], model.n_items)
    assert torch.isinf(scores[:, 0]).all() and (torch.isfinite(scores).sum(1) == model.num_beams).all()


def test_kv_cached_beam_search_equals_uncached(setup):
    _, model, batch = setup
    model.eval()
    codes, att = history(batch, 6)
    cached = model.generate(codes, att, num_beams=10, use_cache=True)
    uncached = model.generate(codes, att, num_beams=10, use_cache=False)
    assert torch.equal(cached.items, uncached.items)
    assert torch.allclose(cached.scores, uncached.scores, atol=1e-5)


def test_beam_search_matches_exhaustive_scoring(setup):
    """With beams >= items the constrained search is exact: it ranks like teacher-forced scoring."""
    _, model, batch = setup
    model.eval()
    full_table, n = model.code_table, 40
    try:
        model.code_table = CodeTable(full_table.codes[:n + 1], full_table.code_num)  # items 1..n
        codes, att = history(batch, 3)
        out = model.generate(codes, att, num_beams=n)
        targets = model.code_table.codes[1:]
        for row in range(3):
            with torch.no_grad():
                logits = model(codes[row:row + 1].expand(n, -1), att[row:row + 1].expand(n, -1), targets)
            exhaustive = logits.log_softmax(-1).gather(2, targets.unsqueeze(-1)).sum((1, 2))
            best = exhaustive.argsort(descending=True) + 1
            assert out.items[row, :10].tolist() == best[:10].tolist()
            assert torch.allclose(out.scores[row], exhaustive.sort(descending=True).values, atol=1e-4)
    finally:
        model.code_table = full_table


def test_loss_decreases_on_one_batch(setup):
    _, model, batch = setup
    model.train()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    losses = []
    for _ in range(8):
        loss = model.calculate_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(model.code_num), rel=0.2)  # ~uniform over codes at init
    assert losses[-1] < losses[0] - 0.1
    scores = model.predict(batch)  # the likelihood of each row's target (tests/test_scoring.py)
    assert scores.shape == (len(batch),) and bool((scores <= 0).all())


def test_lr_schedules():
    inv = lr_factor("inverse_sqrt", 100, 1000)
    assert inv(0) == inv(99) == 1.0 and inv(400) == pytest.approx(0.5)
    cos = lr_factor("cosine", 10, 110)
    assert cos(0) == pytest.approx(0.1) and cos(9) == 1.0 and cos(60) == pytest.approx(0.5) and cos(110) == 0.0


def test_end_to_end_recbole_run(tiny_config_dict):
    result = run("TIGER", "ml-100k", config_dict={**tiny_config_dict, **TINY_T5, "epochs": 1,
                                                    "debug_samples": 30, "lr_scheduler": "cosine",
                                                    "warmup_steps": 1, "MAX_ITEM_LIST_LENGTH": 5,
                                                    "train_batch_size": 256})
    test = result["test_result"]
    assert set(test) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in test.values())
    assert result["saved_model_file"] and result["params"] > 0
