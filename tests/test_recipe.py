"""The official ETEGRec training recipe (issue 11): per-phase LR schedules, gradient clipping with
no stale gradient across a phase change, the finetune stage, informative SIA code distributions,
SIA/PSA over distinct targets, the RQ-VAE checkpoint rule."""
import math

import pytest
import torch

from recbole_etegrec.model.etegrec import ETEGRec, first_occurrences
from recbole_etegrec.model.losses import symmetric_info_nce, symmetric_kl
from recbole_etegrec.tokenizer.pretrain import _pareto_add, kept_epoch
from recbole_etegrec.trainer.checkpoint import read_checkpoint
from recbole_etegrec.trainer.etegrec_trainer import ETEGRecTrainer
from tests.conftest import build


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trainer(tiny_config_dict, tmp_path, **over):
    cfg = {**tiny_config_dict, "debug_samples": 25, "cycle": 2, "warm_epoch": 0, "eval_step": 1,
           "checkpoint_dir": str(tmp_path), **over}
    config, (train, valid, test) = build("ETEGRec", cfg)
    model = ETEGRec(config, train._dataset)
    return ETEGRecTrainer(config, model), train, valid


def _record_epochs(trainer, record):
    """Call ``record(trainer, epoch, phase)`` after every training epoch."""
    train_epoch = trainer._train_epoch

    def wrapped(train_data, epoch_idx, loss_func=None, show_progress=False):
        loss = train_epoch(train_data, epoch_idx, loss_func, show_progress)
        record(trainer, epoch_idx, trainer.phase_of(epoch_idx))
        return loss

    trainer._train_epoch = wrapped


def test_each_phase_warms_up_and_ends_its_cosine_in_its_own_steps(tiny_config_dict, tmp_path, one_thread):
    steps = len(build("ETEGRec", {**tiny_config_dict, "debug_samples": 25})[1][0])
    trainer, train, valid = _trainer(tiny_config_dict, tmp_path, epochs=4, finetune_epochs=0,
                                     rec_warmup_steps=steps, id_warmup_steps=steps, lr_rec=1e-3, lr_id=1e-4)
    lrs = []
    _record_epochs(trainer, lambda t, e, p: lrs.append(
        (e, p, t.rec_optimizer.param_groups[0]["lr"], t.id_optimizer.param_groups[0]["lr"])))
    trainer.fit(train, valid, saved=False)
    assert [(e, p) for e, p, _, _ in lrs] == [(0, "id"), (1, "rec"), (2, "id"), (3, "rec")]
    # epoch 0 = the tokenizer's warm-up (its steps only): peak after it; the recommender untouched
    assert lrs[0][3] == pytest.approx(1e-4) and lrs[0][2] == pytest.approx(1e-3 / steps)
    # epoch 1 = the recommender's warm-up: peak after it; the tokenizer's lr has not moved
    assert lrs[1][2] == pytest.approx(1e-3) and lrs[1][3] == pytest.approx(1e-4)
    # each schedule ends at 0 after its own 2 epochs of steps
    assert lrs[2][3] == pytest.approx(0.0, abs=1e-12) and lrs[3][2] == pytest.approx(0.0, abs=1e-12)


def test_clipping_sees_no_stale_gradient_from_the_other_phase(tiny_config_dict, tmp_path, one_thread):
    trainer, train, valid = _trainer(tiny_config_dict, tmp_path, epochs=4, finetune_epochs=1,
                                     clip_grad_norm={"max_norm": 1e-3}, lr_rec=1e-3)
    model = trainer.model
    tokenizer = {id(p) for p in model.tokenizer.parameters()}
    seen = {"rec": 0, "id": 0, "finetune": 0}
    clip = torch.nn.utils.clip_grad_norm_

    def checked_clip(parameters, **kwargs):
        parameters = list(parameters)
        with_grad = [p for p in parameters if p.grad is not None]
        phase = trainer.phase_of(trainer._epoch_idx)
        # only the active phase's parameters carry a gradient when the norm is taken
        assert all((id(p) in tokenizer) == (phase == "id") for p in with_grad), phase
        seen[phase] += 1
        norm = clip(parameters, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in with_grad]))
        assert float(after) <= 1e-3 * (1 + 1e-4)  # clipped to max_norm
        return norm

    import recbole.trainer.trainer as recbole_trainer

    original = recbole_trainer.clip_grad_norm_
    recbole_trainer.clip_grad_norm_ = checked_clip
    try:
        trainer.fit(train, valid, saved=True)
    finally:
        recbole_trainer.clip_grad_norm_ = original
    assert all(seen.values()), seen  # every phase was checked


def test_finetune_reloads_the_best_checkpoint_with_alignment_off(tiny_config_dict, tmp_path, one_thread):
    trainer, train, valid = _trainer(tiny_config_dict, tmp_path, epochs=4, finetune_epochs=2,
                                     finetune_lr=5e-4, lr_scheduler="constant")
    states = {}
    start = trainer._start_finetune

    def spy_start(train_data, saved=True):
        start(train_data, saved=saved)
        best = read_checkpoint(trainer.saved_model_file)
        states["best_epoch"] = best["epoch"]
        states["equal"] = all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in best["state_dict"].items())
        states["optimizer"] = trainer.finetune_optimizer
        states["lr"] = trainer.finetune_optimizer.param_groups[0]["lr"]

    trainer._start_finetune = spy_start
    terms = []
    _record_epochs(trainer, lambda t, e, p: terms.append((e, p, t.model.align, t.optimizer)))
    loss_of = trainer.model.calculate_loss
    n_terms = []
    trainer.model.calculate_loss = lambda inter: n_terms.append(len(out := loss_of(inter))) or out
    trainer.fit(train, valid, saved=True)

    assert states["equal"] and states["best_epoch"] <= 3  # the model is the best alternation epoch
    finetune = [t for t in terms if t[1] == "finetune"]
    assert [e for e, *_ in finetune] == [4, 5]
    assert all(align is False and opt is states["optimizer"] for _, _, align, opt in finetune)
    assert states["optimizer"] not in (trainer.rec_optimizer, trainer.id_optimizer)
    assert states["lr"] == pytest.approx(5e-4)  # fresh, at finetune_lr
    assert states["optimizer"].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # its cosine ended
    # the finetune batches (the last ones) return the code loss alone; alternation ones SIA/PSA too
    per_epoch = len(n_terms) // 6
    assert set(n_terms[-2 * per_epoch:]) == {1} and set(n_terms[per_epoch:2 * per_epoch]) == {3}


def test_sia_code_distributions_are_informative_by_default(tiny_config_dict, tmp_path):
    """The default relative code temperature gives target code distributions well below uniform
    entropy (softmax(-d / 1.0) was uniform to three decimals on real data)."""
    from recbole_etegrec.trainer.health import tokenizer_health

    config, (train, _, _) = build("ETEGRec", {**tiny_config_dict, "debug_samples": 25,
                                             "checkpoint_dir": str(tmp_path)})
    model = ETEGRec(config, train._dataset)
    uniform = math.log(config["code_num"])
    entropy = tokenizer_health(model)["entropy"]
    assert len(entropy) == config["code_length"] - 1
    assert all(h < 0.6 * uniform for h in entropy), (entropy, uniform)
    model.tokenizer.quantizer.temperature = 1e6  # the flat end, for contrast
    assert all(h > 0.99 * uniform for h in tokenizer_health(model)["entropy"])


def test_first_occurrences_picks_one_row_per_distinct_item():
    items = torch.tensor([7, 3, 7, 9, 3, 3])
    assert first_occurrences(items).tolist() == [1, 0, 3]  # items 3, 7, 9 in ascending order


def test_alignment_losses_use_each_target_item_once(tiny_config_dict, tmp_path, one_thread):
    """A batch whose rows predict the same item: SIA/PSA equal the losses over its distinct targets."""
    config, (train, _, _) = build("ETEGRec", {**tiny_config_dict, "debug_samples": 25,
                                             "checkpoint_dir": str(tmp_path)})
    model = ETEGRec(config, train._dataset).eval()
    train.set_code_table(model.code_table.codes)
    model.set_phase("rec", align=True)
    batch = next(iter(train))
    hidden = model.forward(batch)
    states, items = model.boundary_states(hidden, batch)
    assert len(torch.unique(items)) < len(items), "the fixture batch must repeat a target item"
    first = first_occurrences(items)
    _, sia, psa = model.calculate_loss(batch)
    logits, recon = model.frozen_item_semantics(items[first])
    want_sia = symmetric_kl(model.tokenizer.quantizer.code_logits(model.enc_adapter(states[first])), logits)
    want_psa = symmetric_info_nce(model.dec_adapter(states[first]), recon, model.tau)
    assert float(sia) == pytest.approx(config["rec_kl_loss"] * float(want_sia), rel=1e-5)
    assert float(psa) == pytest.approx(config["rec_dec_cl_loss"] * float(want_psa), rel=1e-5)
    all_rows = symmetric_info_nce(model.dec_adapter(states), model.frozen_item_semantics(items)[1], model.tau)
    assert float(want_psa) != pytest.approx(float(all_rows), rel=1e-3)  # duplicates would change it


def test_psa_sums_both_directions():
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    sim = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T / 0.5
    labels = torch.arange(6)
    want = torch.nn.functional.cross_entropy(sim, labels) + torch.nn.functional.cross_entropy(sim.T, labels)
    assert float(symmetric_info_nce(a, b, 0.5)) == pytest.approx(float(want), rel=1e-6)


def test_rqvae_checkpoint_rule_and_its_pareto_front():
    epochs = [dict(epoch=0, recon=1.00, collision_rate=0.01),  # lowest collision, poor reconstruction
              dict(epoch=1, recon=0.50, collision_rate=0.20),
              dict(epoch=2, recon=0.41, collision_rate=0.08),
              dict(epoch=3, recon=0.40, collision_rate=0.10),  # best reconstruction
              dict(epoch=4, recon=0.45, collision_rate=0.09)]
    front = []
    for e in epochs:
        front = _pareto_add(front, e)
    assert sorted(e["epoch"] for e in front) == [0, 2, 3]  # 1 and 4 are beaten by epoch 2 on both
    assert kept_epoch(front, 0.05)["epoch"] == 2  # within 5% of 0.40, the lowest collision
    assert kept_epoch(front, 0.0)["epoch"] == 3
    assert kept_epoch(front, 2.0)["epoch"] == 0
    assert kept_epoch(epochs, 0.05) == kept_epoch(front, 0.05)  # the front loses nothing the rule needs
