"""ETEGRec: codebook gradients and sync, causal positions, KV-cached beam search, end to end."""
import pytest
import torch

from recbole_etegrec.model.etegrec import ETEGRec
from recbole_etegrec.quick_start import run
from tests.conftest import build


@pytest.fixture(scope="module")
def setup(tiny_config_dict):
    torch.manual_seed(0)
    config, (train, valid, test) = build("ETEGRec", tiny_config_dict)
    model = ETEGRec(config, train._dataset)
    train.set_code_table(model.code_table.codes)
    batch = next(iter(train))
    return config, model, (train, valid, test), batch


def test_code_table_swap_reaches_train_valid_and_test_loaders(setup):
    _, model, loaders, _ = setup
    train, valid, test = loaders
    swapped = model.code_table.codes.clone()
    swapped[1:, 0] = (swapped[1:, 0] + 1) % model.code_num
    train.set_code_table(swapped)  # one call
    try:
        batches = [next(iter(train)), next(iter(valid))[0], next(iter(test))[0]]
        for inter in batches:
            assert torch.equal(inter["target_codes"], swapped[inter["item_id"]])
    finally:
        train.set_code_table(model.code_table.codes)


def test_code_loss_reaches_the_model_codebook_copy(setup):
    _, model, _, batch = setup
    model.set_phase("rec", align=True)
    model.zero_grad()
    losses = model.calculate_loss(batch)
    sum(losses).backward()
    assert all(cb.weight.grad is not None and cb.weight.grad.abs().sum() > 0 for cb in model.codebooks)
    # the tokenizer is frozen in recommender epochs
    assert all(p.grad is None for p in model.tokenizer.parameters())
    model.zero_grad()


def test_codebook_copy_has_its_own_learning_rate(setup):
    config, model, _, _ = setup
    from recbole_etegrec.trainer.etegrec_trainer import ETEGRecTrainer

    trainer = ETEGRecTrainer(config, model)
    groups = trainer.rec_optimizer.param_groups
    codebook = {id(p) for p in model.codebooks.parameters()}
    lrs = {g["lr"] for g in groups if any(id(p) in codebook for p in g["params"])}
    assert lrs == {config["lr_codebook"]}
    rest = [g for g in groups if not any(id(p) in codebook for p in g["params"])]
    assert [g["lr"] for g in rest] == [config["lr_rec"]]
    assert sum(len(g["params"]) for g in groups) == len(model.recommender_parameters())


def test_tokenizer_phase_trains_only_the_tokenizer(setup):
    _, model, _, batch = setup
    model.set_phase("id", align=True)
    model.zero_grad()
    sum(model.calculate_loss(batch)).backward()
    assert all(p.grad is not None for p in model.tokenizer.parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("tokenizer."))
    model.zero_grad()
    model.set_phase("rec", align=True)


def test_sync_makes_both_copies_equal(setup):
    _, model, _, _ = setup
    with torch.no_grad():
        model.codebooks[0].weight.add_(1.0)
    assert not torch.equal(model.codebooks[0].weight, model.tokenizer.quantizer.codebooks[0].weight)
    model.sync_codebooks("to_tokenizer")
    for own, tok in zip(model.codebooks, model.tokenizer.quantizer.codebooks):
        assert torch.equal(own.weight, tok.weight)
    with torch.no_grad():
        model.tokenizer.quantizer.codebooks[1].weight.mul_(2.0)
    model.sync_codebooks("to_rec")
    for own, tok in zip(model.codebooks, model.tokenizer.quantizer.codebooks):
        assert torch.equal(own.weight, tok.weight)


def test_target_positions_follow_the_causal_fix(setup):
    """Code i's logits come from the hidden state at target_positions[i] - 1 (code 0: seq_end)."""
    _, model, _, batch = setup
    model.eval()
    with torch.no_grad():
        hidden = model.forward(batch)
        states, _ = model.boundary_states(hidden, batch)
        last = batch["boundary_mask"][:, -1]  # every row's last boundary is its seq_end
        end = batch["seq_end_position"]
        assert torch.equal(batch["target_positions"][:, 0], end + 1)
        # the hidden state at seq_end only sees history: changing the target codes leaves it unchanged
        changed = batch["code_input"].clone()
        changed[:, end[0] + 1:] = (changed[:, end[0] + 1:] + 1) % model.code_num
        codes, att = changed, batch["code_attention"]
        h2 = model.encode(codes, att)
        assert torch.allclose(h2[:, end[0]], hidden[:, end[0]], atol=1e-5)
        assert not torch.allclose(h2[:, end[0] + 1], hidden[:, end[0] + 1], atol=1e-5)
        assert last.all()
        row_last = batch["boundary_mask"].sum(1).cumsum(0) - 1  # states are flattened row by row
        assert torch.equal(states[row_last], hidden[torch.arange(len(end)), end].float())


def test_kv_cached_beam_search_equals_uncached(setup):
    _, model, _, batch = setup
    model.eval()
    end = int(batch["seq_end_position"][0]) + 1
    codes, att = batch["code_input"][:8, :end], batch["code_attention"][:8, :end]
    cached = model.generate(codes, att, num_beams=10, use_cache=True)
    uncached = model.generate(codes, att, num_beams=10, use_cache=False)
    assert torch.equal(cached.items, uncached.items)
    assert torch.allclose(cached.scores, uncached.scores, atol=1e-4)
    assert (cached.items > 0).all()


def test_beam_search_matches_exhaustive_scoring(setup):
    """With a code table of a few items and beams >= items, beam order == teacher-forced scores."""
    _, model, _, batch = setup
    model.eval()
    full_table = model.code_table
    try:
        from recbole_etegrec.tokenizer.code_table import CodeTable

        model.code_table = CodeTable(full_table.codes[:7], full_table.code_num)  # items 1..6
        end = int(batch["seq_end_position"][0]) + 1
        codes, att = batch["code_input"][:3, :end], batch["code_attention"][:3, :end]
        out = model.generate(codes, att, num_beams=6)
        for row in range(3):
            scores = []
            for item in range(1, 7):
                target = model.code_table.codes[item]
                seq = torch.cat([codes[row], target]).unsqueeze(0)
                mask = torch.cat([att[row], torch.ones(4, dtype=att.dtype)]).unsqueeze(0)
                hidden = model.encode(seq, mask)[0]
                logp = sum(torch.log_softmax(model.code_logits(hidden[end - 1 + i], i), -1)[target[i]]
                           for i in range(4))
                scores.append(float(logp))
            order = sorted(range(1, 7), key=lambda i: -scores[i - 1])
            assert out.items[row].tolist() == order
    finally:
        model.code_table = full_table


def test_end_to_end_recbole_run(tiny_config_dict):
    """Alternating phases through RecBole's pipeline: fit, best-checkpoint reload, test metrics."""
    # epoch 0: tokenizer epoch (+ re-tokenization), epoch 1: recommender epoch with SIA/PSA
    result = run("ETEGRec", "ml-100k", config_dict={**tiny_config_dict, "epochs": 2, "cycle": 2,
                                                      "warm_epoch": 0, "finetune_epochs": 0,
                                                      "debug_samples": 25})
    test = result["test_result"]
    assert set(test) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert all(0.0 <= v <= 1.0 for v in test.values())
    assert result["saved_model_file"] and result["params"] > 0


def test_symmetric_kl_is_the_sum_of_both_kl_divergences():
    """SIA's one-expression form equals KL(a||b) + KL(b||a) per level, averaged over levels."""
    import torch.nn.functional as F

    from recbole_etegrec.model.losses import symmetric_kl

    torch.manual_seed(0)
    a, b = torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    reference = sum(
        F.kl_div(F.log_softmax(lb, -1), F.log_softmax(la, -1), log_target=True, reduction="batchmean")
        + F.kl_div(F.log_softmax(la, -1), F.log_softmax(lb, -1), log_target=True, reduction="batchmean")
        for la, lb in zip(a, b)) / 3
    assert torch.allclose(symmetric_kl(a, b), reference, atol=1e-6)
    assert torch.allclose(symmetric_kl(list(a), list(b)), reference, atol=1e-6)
    assert float(symmetric_kl(a, a)) == pytest.approx(0.0, abs=1e-7)


def test_fused_adamw_steps_like_the_reference_adamw():
    from recbole_etegrec.trainer.optim import build_adamw

    torch.manual_seed(0)
    nets = [torch.nn.Linear(8, 4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = build_adamw(nets[0].parameters(), 1e-2, 0.05)
    assert fused.defaults["fused"]
    reference = torch.optim.AdamW(nets[1].parameters(), lr=1e-2, weight_decay=0.05)
    x = torch.randn(16, 8)
    for _ in range(5):
        for net, opt in zip(nets, (fused, reference)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(nets[0].parameters(), nets[1].parameters()))
