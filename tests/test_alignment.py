"""Issue 21: SIA that cannot collapse the tokenizer. The guard undoes a tokenizer epoch that wrecks
the codes; the SIA/VQ gradient probe and the health lines report what a tokenizer epoch did."""
import numpy as np
import pytest
import torch

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.model.etegrec import ETEGRec
from recbole_etegrec.trainer.etegrec_trainer import ETEGRecTrainer
from recbole_etegrec.trainer.health import guard_verdict, sia_gradient_ratio, tokenizer_health
from tests.conftest import build


def _trainer(tiny_config_dict, tmp_path, **over):
    cfg = {**tiny_config_dict, "debug_samples": 25, "cycle": 2, "warm_epoch": 0, "eval_step": 1,
           "checkpoint_dir": str(tmp_path), **over}
    config, (train, valid, _) = build("ETEGRec", cfg)
    trainer = ETEGRecTrainer(config, ETEGRec(config, train._dataset))
    return trainer, train


def _collapsing(model):
    """A tokenizer-epoch loss that also moves every level-1 code onto code 0: a forced collapse."""
    calculate_loss = model.calculate_loss

    def loss(interaction):
        if model.phase == "id":
            with torch.no_grad():
                book = model.tokenizer.quantizer.codebooks[1].weight
                book.copy_(book[0].expand_as(book))
        return calculate_loss(interaction)
    return loss


@pytest.mark.parametrize("guard", [True, False])
def test_a_tokenizer_epoch_forced_to_collapse_is_undone(tiny_config_dict, tmp_path, guard):
    over = {} if guard else {"tokenizer_guard_collision": None, "tokenizer_guard_utilization": None}
    trainer, train = _trainer(tiny_config_dict, tmp_path, **over)
    model = trainer.model
    weights = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    codes = model.code_table.codes.clone()
    start = tokenizer_health(model)
    model.calculate_loss = _collapsing(model)
    if not guard:  # the control: without the guard the collapsed codes cannot even form a code table
        with pytest.raises(EtegrecError, match="items share the same 3 semantic codes"):
            trainer.run_epoch(train, 0)
        return
    trainer.run_epoch(train, 0)  # epoch 0 is a tokenizer epoch (cycle 2)
    last = trainer.health_history[-1]
    assert last["epoch"] == 0
    assert last["undone"] and "level 1 utilization" in last["undone"]
    assert all(torch.equal(v, weights[k]) for k, v in model.tokenizer.state_dict().items())
    assert torch.equal(model.code_table.codes, codes)
    assert torch.equal(model.codebooks[1].weight, model.tokenizer.quantizer.codebooks[1].weight)
    assert tokenizer_health(model)["collision_rate"] == pytest.approx(start["collision_rate"])


def test_a_healthy_tokenizer_epoch_is_kept_and_reports_the_sia_gradient_ratio(tiny_config_dict, tmp_path):
    trainer, train = _trainer(tiny_config_dict, tmp_path, tokenizer_guard_collision=1.0,
                              tokenizer_guard_utilization=0.0)
    trainer.run_epoch(train, 1)  # a recommender epoch trains the adapters with SIA/PSA first
    before = {k: v.clone() for k, v in trainer.model.tokenizer.state_dict().items()}
    trainer.run_epoch(train, 2)
    last = trainer.health_history[-1]
    assert last["undone"] is None
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.tokenizer.state_dict().items())
    ratios = last["sia_vq_grad_ratio"]
    assert len(ratios) == trainer.model.levels and all(r > 0 and r < float("inf") for r in ratios)


def test_the_sia_gradient_ratio_scales_with_the_sia_weight(tiny_config_dict, tmp_path):
    """The probe measures SIA's pull itself: ten times the SIA weight, ten times the ratio."""
    trainer, train = _trainer(tiny_config_dict, tmp_path)
    model = trainer.model
    train.set_code_table(model.code_table.codes)
    model.set_phase("id", align=True)
    batch = next(iter(train))
    base = sia_gradient_ratio(model, batch)
    model.weights["id_kl_loss"] *= 10
    assert sia_gradient_ratio(model, batch) == pytest.approx([10 * r for r in base], rel=1e-4)
    assert model.phase == "id"  # the probe leaves the model's phase as it was


def test_guard_verdict_rules():
    start = {"collision_rate": 0.10, "utilization": [1.0, 1.0, 0.5]}
    ok = {"collision_rate": 0.115, "utilization": [1.0, 0.96, 0.5]}
    assert guard_verdict(ok, start, 0.02, 0.95) is None
    worse = {"collision_rate": 0.13, "utilization": [1.0, 0.9, 0.49]}
    verdict = guard_verdict(worse, start, 0.02, 0.95)
    assert "collision" in verdict and "level 1" in verdict and "level 2" in verdict  # below the start's 0.5
    assert guard_verdict(worse, start, None, None) is None


def test_the_tokenizer_stage_reuses_a_sasrec_trained_with_the_same_settings(tmp_path, monkeypatch):
    """A SASRec run publishes its best epoch's item table; the tokenizer stage with matching
    settings loads it (no second SASRec fit) and gets exactly that table; other settings train."""
    from recbole.trainer import Trainer

    from recbole_etegrec.config import Config
    from recbole_etegrec.data import create_dataset
    from recbole_etegrec.quick_start import run
    from recbole_etegrec.stages.item_embeddings import _sasrec_config, load_item_embeddings, sasrec_table_path

    common = {"debug": True, "debug_samples": 40, "checkpoint_dir": str(tmp_path), "state": "WARNING",
              "show_progress": False, "stopping_step": 2, "epochs": 2}
    sasrec = {**common, "hidden_size": 16, "inner_size": 64}
    result = run("SASRec", "ml-100k", config_dict=sasrec)
    fits = []
    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: fits.append(1) or fit(self, *a, **k))

    def embeddings(size):
        config = Config(model="ETEGRec", dataset="ml-100k", config_dict={
            **common, "item_emb_source": "sasrec", "sasrec_emb_size": size, "sasrec_emb_epochs": 2,
            "sasrec_emb_stopping_step": 2})
        return config, load_item_embeddings(config, create_dataset(config))

    config, emb = embeddings(16)
    assert fits == [] and emb.shape[1] == 16
    published = np.load(sasrec_table_path(_sasrec_config(config)))["table"]
    assert np.allclose(emb[1:].numpy(), published[1:])  # the same item order on the same data
    assert result["test_result"]  # the SASRec row itself is untouched by the publishing
    _, other = embeddings(8)  # another hidden size: a different SASRec, trained here
    assert fits and other.shape[1] == 8


def test_tokenizer_epochs_align_only_after_an_aligned_recommender_epoch(tiny_config_dict, tmp_path):
    trainer, _ = _trainer(tiny_config_dict, tmp_path, warm_epoch=2, epochs=10)
    # epoch 2 is the first tokenizer epoch past warm_epoch, but no recommender epoch has aligned yet
    assert [trainer.aligned(e) for e in range(8)] == [False, False, False, True, True, True, True, True]
    trainer.cycle = 1  # no tokenizer epochs: the recommender aligns from warm_epoch
    assert [trainer.aligned(e) for e in range(5)] == [False, False, True, True, True]
