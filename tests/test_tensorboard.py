"""``log_tensorboard: True``: ETEGRec's loss terms, tokenizer health and validation metrics reach
RecBole's TensorBoard event file (``log_tensorboard/<log name>/``); ``log_wandb: True`` sends the
same figures through RecBole's W&B logger (a recording stand-in for the ``wandb`` package, which
the test install does not carry). One tiny 3-epoch run in a temporary working folder; without
wandb, ``log_wandb`` is one error line before any data is read."""
import glob
import importlib.machinery
import importlib.util
import math
import os
import sys
import types

import pytest
import torch

from recbole_etegrec.quick_start import run
from recbole_etegrec.trainer.health import format_health, tokenizer_health

ETEGREC = {"epochs": 3, "cycle": 2, "finetune_epochs": 0, "warm_epoch": 0, "debug_samples": 25,
           "log_tensorboard": True, "log_wandb": True}


def recording_wandb():
    """What RecBole's ``WandbLogger`` calls on the ``wandb`` module, recorded."""
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.run, module.logged = None, []
    module.init = lambda **kwargs: setattr(module, "run", types.SimpleNamespace(summary={}))
    module.define_metric = lambda *args, **kwargs: None
    module.log = lambda metrics, commit=True: module.logged.append(dict(metrics))
    return module


@pytest.fixture(scope="module")
def wandb_logged():
    return []


@pytest.fixture(scope="module")
def events(tiny_config_dict, tmp_path_factory, wandb_logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path_factory.mktemp("tb-run")
    wandb = recording_wandb()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # RecBole writes log/ and log_tensorboard/ under the working folder
        mp.setitem(sys.modules, "wandb", wandb)
        run("ETEGRec", "ml-100k", config_dict={**tiny_config_dict, **ETEGREC}, evaluate_test=False)
    wandb_logged.extend(wandb.logged)
    # <log file name>/ (ETEGRec-ml-100k-<time>-<hash>); under pytest the root logger's first file
    # handler is pytest's (os.devnull), hence "null"
    runs = [d for d in glob.glob(str(folder / "log_tensorboard" / "*")) if os.path.isdir(d)]
    assert len(runs) == 1, runs
    acc = EventAccumulator(runs[0], size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_loss_terms_health_and_valid_metrics_are_written(events, tiny_config_dict):
    levels = 3  # code_length 4: 3 RQ-VAE levels + the suffix
    expected = ["ETEGRec/id_vq_loss", "ETEGRec/rec_code_loss", "ETEGRec/sia", "ETEGRec/psa",
                "ETEGRec/tokenizer_recon", "ETEGRec/collision_rate", "Vaild_score", "valid/recall@10",
                *[f"ETEGRec/utilization_l{lv}" for lv in range(levels)],
                *[f"ETEGRec/entropy_l{lv}" for lv in range(levels)]]
    missing = [tag for tag in expected if tag not in events]
    assert not missing, sorted(events)
    assert [s for s, _ in events["ETEGRec/id_vq_loss"]] == [0, 2]
    assert [s for s, _ in events["ETEGRec/rec_code_loss"]] == [1]
    # tokenizer epochs align only after an aligned recommender epoch: epoch 0 has no SIA/PSA, epoch 2 has
    assert [s for s, _ in events["ETEGRec/sia"]] == [1, 2] and [s for s, _ in events["ETEGRec/psa"]] == [1, 2]
    # health: once for the pretrained tokenizer (step -1), once after each tokenizer epoch (0, 2)
    assert [s for s, _ in events["ETEGRec/tokenizer_recon"]] == [-1, 0, 2]
    assert [s for s, _ in events["ETEGRec/tokenizer_epoch_undone"]] == [0, 2]
    assert [s for s, _ in events["ETEGRec/items_recoded"]] == [0, 2]
    for (_, undone), (_, recoded) in zip(events["ETEGRec/tokenizer_epoch_undone"], events["ETEGRec/items_recoded"]):
        assert 0 <= recoded <= 1 and (recoded == 0 or not undone)  # an undone epoch re-codes nothing
    for lv in range(levels):  # the SIA/VQ probe runs after aligned tokenizer epochs only
        assert [s for s, _ in events[f"ETEGRec/sia_vq_grad_ratio_l{lv}"]] == [2]
    code_num = tiny_config_dict["code_num"]
    for lv in range(levels):
        for _, value in events[f"ETEGRec/entropy_l{lv}"]:
            assert math.isfinite(value) and 0 <= value <= math.log(code_num) + 1e-5
        for _, value in events[f"ETEGRec/utilization_l{lv}"]:
            assert 0 < value <= 1
    for _, value in events["ETEGRec/collision_rate"]:
        assert 0 <= value <= 1
    assert all(math.isfinite(v) for tag in expected for _, v in events[tag])


def test_wandb_gets_the_same_figures(events, wandb_logged):
    """Every plugin figure TensorBoard got reaches RecBole's W&B logger as ``train/<tag>`` at the same
    step (``train_step``), with the same value."""
    sent = {}
    for metrics in wandb_logged:
        for key, value in metrics.items():
            if key.startswith("train/ETEGRec/"):
                sent.setdefault(key[len("train/"):], []).append((metrics["train_step"], value))
    ours = {tag: points for tag, points in events.items() if tag.startswith("ETEGRec/")}
    assert set(sent) == set(ours)
    for tag, points in ours.items():
        assert [s for s, _ in sent[tag]] == [s for s, _ in points], tag
        assert [v for _, v in sent[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert any("valid/recall@10" in m for m in wandb_logged)  # RecBole's own valid metrics


def test_log_wandb_without_wandb_is_one_error_line(monkeypatch):
    from recbole_etegrec.config import Config
    from recbole_etegrec.errors import EtegrecError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(EtegrecError, match=r"config key 'log_wandb' from the command line is True, but wandb is not "
                                           r"installed: pip install -e '\.\[wandb\]'"):
        Config(model="SASRec", dataset="ml-100k", cmd_args=["--log_wandb=True"])


def test_tokenizer_health_is_pure_and_consistent():
    """Uniform logits give log(code_num) entropy; all items on one code: utilization 1/code_num, full collision."""
    from types import SimpleNamespace

    from recbole_etegrec.tokenizer.rqvae import RQVAE

    rqvae = RQVAE(in_dim=4, hidden=[8], e_dim=2, code_num=4, levels=2)
    with torch.no_grad():
        for book in rqvae.quantizer.codebooks:
            book.weight.zero_()  # every code identical: uniform distributions, all items on code 0
    model = SimpleNamespace(tokenizer=rqvae, item_emb=torch.randn(6, 4))
    rqvae.train()
    health = tokenizer_health(model)
    assert rqvae.training  # mode restored
    assert health["utilization"] == [0.25, 0.25] and health["collision_rate"] == 1.0
    assert all(abs(h - math.log(4)) < 1e-5 for h in health["entropy"])
    assert health["recon"] >= 0 and "tokenizer health" in format_health(health)


def test_items_recoded_counts_items_with_any_code_moved():
    from recbole_etegrec.trainer.health import items_recoded

    old = torch.tensor([[-1, -1], [0, 1], [2, 3], [4, 5]])  # row 0: padding, never counted
    new = torch.tensor([[7, 7], [0, 1], [2, 0], [5, 5]])
    assert items_recoded(old, new) == pytest.approx(2 / 3) and items_recoded(old, old) == 0.0
    assert "items re-coded 0.6667" in format_health({"recon": 0.1, "collision_rate": 0.0, "utilization": [1.0],
                                                     "entropy": [0.5], "items_recoded": 2 / 3})


def test_a_real_offline_wandb_run_holds_etegrec_terms(tiny_config_dict, tmp_path, monkeypatch):
    """With the ``[wandb]`` extra installed (not in the test install: skipped there), ``WANDB_MODE=
    offline``: RecBole's W&B run holds ETEGRec's loss terms and tokenizer health, finite, next to
    RecBole's own valid metrics (every logged value, read back from the run file).
    Measured with wandb 0.19.11 and 0.31.0."""
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run("ETEGRec", "ml-100k", config_dict={**tiny_config_dict, **ETEGREC, "log_tensorboard": False,
                                           "checkpoint_dir": str(tmp_path / "saved")}, evaluate_test=False)
    import wandb

    wandb.finish()  # RecBole never finishes its run: flush it
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 1, glob.glob(str(tmp_path / "wandb" / "*"))
    logged = _wandb_records(runs[0])
    for key in ("train/ETEGRec/rec_code_loss", "train/ETEGRec/id_vq_loss", "train/ETEGRec/sia", "train/ETEGRec/psa",
                "train/ETEGRec/collision_rate", "train/ETEGRec/utilization_l0", "train/ETEGRec/items_recoded",
                "valid/ndcg@10"):
        assert key in logged and all(math.isfinite(v) for v in logged[key]), sorted(logged)


def _wandb_records(run_dir) -> dict:
    """{key: [values]} of the history records in an offline W&B run file. wandb >= 0.20 has no
    Python reader for it (its Go core writes it), so the file's LevelDB-log framing (7-byte header,
    32 KiB blocks of [crc32 u32, length u16, kind u8] records; kind 1 = whole, 2-4 = first, middle,
    last piece) is read here and each record parsed with wandb's own protobuf."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    with open(glob.glob(os.path.join(run_dir, "run-*.wandb"))[0], "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", data[:7]
    logged, pos, piece = {}, 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block trailer or padding: the next block
            pos += left
            continue
        piece, pos = piece + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            piece = b""
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    logged.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
    return logged
