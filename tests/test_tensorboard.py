"""``log_tensorboard: True``: ETEGRec's loss terms, tokenizer health and validation metrics reach
RecBole's TensorBoard event file (``log_tensorboard/<log name>/``). One tiny 2-epoch run (a
tokenizer epoch, then a recommender epoch, both with SIA/PSA) in a temporary working folder."""
import glob
import math
import os

import pytest
import torch

from recbole_etegrec.quick_start import run
from recbole_etegrec.trainer.health import format_health, tokenizer_health

ETEGREC = {"epochs": 3, "cycle": 2, "finetune_epochs": 0, "warm_epoch": 0, "debug_samples": 25,
           "log_tensorboard": True}


@pytest.fixture(scope="module")
def events(tiny_config_dict, tmp_path_factory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path_factory.mktemp("tb-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # RecBole writes log/ and log_tensorboard/ under the working folder
        run("ETEGRec", "ml-100k", config_dict={**tiny_config_dict, **ETEGREC}, evaluate_test=False)
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

