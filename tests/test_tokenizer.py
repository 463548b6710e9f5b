"""RQ-VAE tokenizer: model, code table, pretraining, checkpoints and embedding sources (tiny sizes)."""
import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_etegrec.commands.tokenize import main as pretrain_main
from recbole_etegrec.config import Config
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.stages.item_embeddings import load_item_embeddings
from recbole_etegrec.stages.item_tokenizer import load_or_pretrain, tokenizer_cache_path
from recbole_etegrec.tokenizer import (
    RQVAE,
    ResidualQuantizer,
    apply_norm,
    build_code_table,
    fit_norm,
    load_tokenizer,
    pretrain_rqvae,
    save_tokenizer,
)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny tensors: extra threads only add synchronisation cost on a busy 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**over):
    """A real Config (every other setting from the property files) for a dataset named 'toy'."""
    values = dict(
        data_path=".", checkpoint_dir="saved", item_emb_source="file", e_dim=8, code_num=16,
        rqvae_hidden=[32], rqvae_epochs=20, rqvae_lr=3e-3, rqvae_batch_size=64, rqvae_emb_norm="standard",
        rqvae_ae_warmup=2, rqvae_warmup_epochs=1, seed=7, show_progress=False,
    )
    values.update(over)
    return Config(model="ETEGRec", dataset="toy", config_dict=values)


def fake_dataset(n_items):
    tokens = np.array(["[PAD]"] + [f"i{i}" for i in range(1, n_items)])
    return SimpleNamespace(item_num=n_items, iid_field="item_id", field2id_token={"item_id": tokens})


def model(**over):
    kw = dict(in_dim=16, hidden=[32], e_dim=8, code_num=16, levels=3)
    kw.update(over)
    return RQVAE(**kw)


# -- RQ-VAE ------------------------------------------------------------------------------------
def test_shapes_and_loss_parts():
    torch.manual_seed(0)
    out = model()(torch.randn(10, 16))
    assert out.recon.shape == (10, 16) and out.z.shape == (10, 8)
    assert out.quant.quantized.shape == (10, 8) and out.quant.codes.shape == (10, 3)
    assert out.quant.codes.dtype == torch.long and len(out.quant.logits) == 3
    assert all(lg.shape == (10, 16) for lg in out.quant.logits)
    assert torch.allclose(out.loss, out.recon_loss + out.quant.loss)


def test_gradients_reach_encoder_codebooks_and_logits_inputs():
    torch.manual_seed(0)
    net = model()
    x = torch.randn(10, 16)
    net(x).recon_loss.backward()  # straight-through: the reconstruction trains the encoder
    assert net.encoder[0].weight.grad.abs().sum() > 0
    assert all(b.weight.grad is None for b in net.quantizer.codebooks)  # recon never moves codes
    net.zero_grad()
    net(x).quant.loss.backward()
    assert all(b.weight.grad.abs().sum() > 0 for b in net.quantizer.codebooks)
    z = torch.randn(10, 8, requires_grad=True)
    quant = net.quantizer(z)
    for level, logits in enumerate(quant.logits):
        net.zero_grad()
        gz, gbook = torch.autograd.grad(logits.log_softmax(-1)[:, 0].sum(),
                                        [z, net.quantizer.codebooks[level].weight], allow_unused=True)
        assert gbook.abs().sum() > 0  # every level's logits train its own codebook
        # official straight-through residual: only the first level reaches the encoder's latent
        assert (gz is not None and gz.abs().sum() > 0) == (level == 0)


def test_quantization_loss_is_the_mean_over_levels_and_deep_levels_do_not_move_the_encoder():
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(3, 16, 8)
    z = torch.randn(12, 8, requires_grad=True)
    out = quantizer(z)
    residual, per_level = z.detach(), []
    for lvl, book in enumerate(quantizer.codebooks):
        chosen = book.weight[out.codes[:, lvl]].detach()
        per_level.append(1.25 * F.mse_loss(chosen, residual))  # codebook + 0.25 * commitment, same value
        residual = residual - chosen
    assert torch.allclose(out.loss, torch.stack(per_level).mean())
    (gz,) = torch.autograd.grad(out.loss, [z])
    want = 0.25 * 2 * (z.detach() - quantizer.codebooks[0].weight[out.codes[:, 0]].detach()) / z.numel() / 3
    assert torch.allclose(gz, want, atol=1e-7)  # the first level's commitment only


def test_shared_level_temperature_is_scale_invariant():
    """SIA's code distributions do not change when latents and codebooks are multiplied by 10 (the
    scale is each level's mean squared item-to-code distance), and an item's distribution does
    not depend on which other rows share its batch (one temperature per level, not per row)."""
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(3, 16, 8, temperature=0.05)
    items, seqs = torch.randn(50, 8), torch.randn(7, 8) * 3  # sequence vectors at another scale
    quantizer.calibrate(items)
    before_items, before_seqs = quantizer.code_logits(items).softmax(-1), quantizer.code_logits(seqs).softmax(-1)
    with torch.no_grad():
        for book in quantizer.codebooks:
            book.weight.mul_(10)
    scale = quantizer.calibrate(items * 10)
    assert torch.allclose(quantizer.code_logits(items * 10).softmax(-1), before_items, atol=1e-5)
    assert torch.allclose(quantizer.code_logits(seqs * 10).softmax(-1), before_seqs, atol=1e-5)
    assert torch.allclose(quantizer.code_logits(items[:3] * 10), quantizer.code_logits(items * 10)[:, :3])
    assert scale.shape == (3,) and torch.allclose(scale, 100 * quantizer.calibrate(items * 10) / 100)


def test_straight_through_value_is_sum_of_chosen_codes():
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(3, 16, 8)
    z = torch.randn(12, 8)
    out = quantizer(z)
    chosen = sum(book.weight[out.codes[:, lvl]] for lvl, book in enumerate(quantizer.codebooks))
    assert torch.allclose(out.quantized, chosen, atol=1e-6)
    # hard codes are the nearest code of each level's residual
    residual = z
    for lvl, book in enumerate(quantizer.codebooks):
        assert torch.equal(torch.cdist(residual, book.weight).argmin(1), out.codes[:, lvl])
        residual = residual - book.weight[out.codes[:, lvl]]


def test_kmeans_init_finds_cluster_centres():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(16, 8, generator=gen) * 10
    labels = torch.arange(16).repeat_interleave(20)
    z = centres[labels] + 0.01 * torch.randn(len(labels), 8, generator=gen)
    quantizer = ResidualQuantizer(3, 16, 8)
    quantizer.kmeans_init(z, seed=0)
    book = quantizer.codebooks[0].weight.detach()
    # every true centre has a codebook vector on it, and level-0 codes identify the clusters
    assert torch.cdist(centres, book).min(1).values.max() < 0.05
    codes = quantizer(z).codes[:, 0]
    for k in range(16):
        assert len(torch.unique(codes[labels == k])) == 1
    assert len(torch.unique(codes)) == 16


def test_kmeans_init_with_fewer_points_than_codes():
    quantizer = ResidualQuantizer(2, 16, 8)
    quantizer.kmeans_init(torch.randn(5, 8), seed=0)
    assert all(torch.isfinite(b.weight).all() for b in quantizer.codebooks)
    assert len(torch.unique(quantizer.codebooks[0].weight, dim=0)) == 16


def test_reseed_dead_codes_leaves_no_dead_code():
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(3, 16, 8)
    with torch.no_grad():
        for book in quantizer.codebooks:  # one far-away live code, everything else dead
            book.weight.fill_(100.0)
            book.weight[0] = 0.0
    z = torch.randn(200, 8)
    assert len(torch.unique(quantizer(z).codes[:, 0])) == 1
    reseeded = quantizer.reseed_dead_codes(z, generator=torch.Generator().manual_seed(0))
    assert reseeded == [15, 15, 15]
    codes = quantizer(z).codes
    for level in range(3):
        assert len(torch.unique(codes[:, level])) == 16
    assert quantizer.reseed_dead_codes(z) == [0, 0, 0]


def test_from_config_and_get_codes():
    net = RQVAE.from_config(tiny_config(code_length=3), in_dim=16)
    assert net.quantizer.levels == 2 and net.quantizer.code_num == 16
    net.train()
    codes = net.get_codes(torch.randn(9, 16), batch_size=4)
    assert codes.shape == (9, 2) and net.training  # mode restored


# -- code table --------------------------------------------------------------------------------
def test_suffix_assignment_and_overflow():
    sem = torch.tensor([[1, 2, 3], [1, 2, 3], [0, 0, 0], [1, 2, 3]])
    table = build_code_table(sem, code_num=4)
    assert table.codes[0].tolist() == [-1, -1, -1, -1]
    assert table.codes[1:, 3].tolist() == [0, 1, 0, 2]
    assert table.max_suffix == 2 and table.collision_rate() == pytest.approx(0.75)
    with pytest.raises(EtegrecError, match="suffix"):
        build_code_table(torch.tensor([[1, 1, 1]] * 5), code_num=4)


def test_trie_allowed_next_and_lookup():
    table = build_code_table(torch.tensor([[1, 2, 3], [1, 0, 3], [2, 2, 2]]), code_num=4)
    assert table.allowed_next(torch.zeros(1, 0, dtype=torch.long))[0].nonzero().flatten().tolist() == [1, 2]
    allowed = table.allowed_next(torch.tensor([[1], [3]]))
    assert allowed[0].nonzero().flatten().tolist() == [0, 2] and not allowed[1].any()
    assert table.allowed_next(torch.tensor([[1, 2, 3]]))[0].nonzero().flatten().tolist() == [0]
    assert table.lookup(torch.tensor([[1, 0, 3, 0], [2, 2, 2, 0], [2, 2, 2, 1]])).tolist() == [2, 3, -1]


# -- pretraining and checkpoints ------------------------------------------------------------------
def synthetic_embeddings(n=200, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=gen) * 3 + 1
    emb[0] = 0.0
    return emb


def test_pretrain_lowers_loss_and_separates_items(caplog):
    emb = synthetic_embeddings()
    with caplog.at_level(logging.INFO):
        net, table, stats = pretrain_rqvae(tiny_config(), apply_norm(emb, fit_norm(emb, "standard")))
    # the kept epoch trades a little reconstruction for fewer collisions, within the tolerance
    assert stats["best_recon"] < stats["initial_recon"]
    assert stats["recon"] <= stats["best_recon"] * (1 + 0.05) + 1e-12
    assert 0 < stats["explained_variance"] <= 1
    assert table.n_items == 200 and table.code_length == 4
    assert len(torch.unique(table.codes[1:], dim=0)) == 199  # zero duplicate tuples
    assert len(stats["utilization"]) == 3 and len(stats["perplexity"]) == 3
    assert 0 <= stats["collision_rate"] <= 1 and stats["max_suffix"] == table.max_suffix
    assert "rqvae epoch 0" in caplog.text
    # the table is exactly what the returned model gives
    codes = net.get_codes(apply_norm(emb, fit_norm(emb, "standard"))[1:])
    assert torch.equal(codes, table.codes[1:, :3])


def test_normalisation_keeps_padding_row():
    emb = synthetic_embeddings()
    for kind in ("standard", "l2", "none"):
        out = apply_norm(emb, fit_norm(emb, kind))
        assert torch.equal(out[0], torch.zeros(16))
    std = apply_norm(emb, fit_norm(emb, "standard"))[1:]
    assert std.mean(0).abs().max() < 1e-4 and (std.std(0) - 1).abs().max() < 1e-3
    with pytest.raises(EtegrecError, match="rqvae_emb_norm"):
        fit_norm(emb, "minmax")


def test_save_load_round_trip(tmp_path):
    emb = synthetic_embeddings()
    norm = fit_norm(emb, "standard")
    net, table, stats = pretrain_rqvae(tiny_config(rqvae_epochs=2), apply_norm(emb, norm))
    path = str(tmp_path / "tok" / "t.pth")
    save_tokenizer(path, net, table, stats, norm, item_emb=apply_norm(emb, norm), tokens=["a", "b"])
    bundle = load_tokenizer(path)
    assert torch.equal(bundle.code_table.codes, table.codes)
    assert torch.allclose(bundle.normalize(emb), apply_norm(emb, norm))
    assert torch.equal(bundle.rqvae.get_codes(bundle.item_emb[1:]), table.codes[1:, :3])
    assert bundle.stats["collision_rate"] == stats["collision_rate"]
    assert not [f for f in os.listdir(tmp_path / "tok") if ".tmp" in f]


def test_load_or_pretrain_caches_and_checks(tmp_path, caplog):
    emb = synthetic_embeddings(n=60)
    npy = tmp_path / "emb.npy"
    np.save(npy, emb.numpy())
    settings = dict(checkpoint_dir=str(tmp_path / "saved"), item_emb_file=str(npy), rqvae_epochs=2)
    config = tiny_config(**settings)
    dataset = fake_dataset(60)
    with caplog.at_level(logging.INFO):
        first = load_or_pretrain(config, dataset)
        assert "cache miss" in caplog.text and os.path.isfile(tokenizer_cache_path(config))
        caplog.clear()
        second = load_or_pretrain(config, dataset)
        assert "cache hit" in caplog.text
    assert torch.equal(first.code_table.codes, second.code_table.codes)
    assert second.item_emb.shape == (60, 16)
    assert tokenizer_cache_path(tiny_config(**settings, rqvae_lr=0.1)) != tokenizer_cache_path(config)
    cached = tokenizer_cache_path(config)
    with pytest.raises(EtegrecError, match="code_num"):
        load_or_pretrain(tiny_config(**settings, code_num=32, tokenizer_path=cached), dataset)
    with pytest.raises(EtegrecError, match="other items"):
        load_or_pretrain(tiny_config(**settings, tokenizer_path=cached), fake_dataset(50))
    with pytest.raises(EtegrecError, match="does not exist"):
        load_or_pretrain(tiny_config(**settings, tokenizer_path=str(tmp_path / "nope.pth")), dataset)


# -- embedding sources ----------------------------------------------------------------------------
def test_file_source_shape_error(tmp_path):
    npy = tmp_path / "emb.npy"
    np.save(npy, np.zeros((7, 4), dtype=np.float32))
    config = tiny_config(item_emb_file=str(npy))
    assert load_item_embeddings(config, fake_dataset(7)).shape == (7, 4)
    with pytest.raises(EtegrecError, match=r"\(7, 4\).*\[9, d\]"):
        load_item_embeddings(config, fake_dataset(9))
    with pytest.raises(EtegrecError, match="item_emb_file"):
        load_item_embeddings(tiny_config(), fake_dataset(7))
    with pytest.raises(EtegrecError, match="item_emb_source"):
        load_item_embeddings(tiny_config(item_emb_source="bert"), fake_dataset(7))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("bert")
    words = ["title", "brand", "guitar", "drum", "red", "blue", "acme", ":", ";", "string", "stick"]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(folder)  # positional: vocab_file (v4) / vocab (v5)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=300)
    BertModel(config).save_pretrained(folder)
    return str(folder)


def test_text_source_with_tiny_bert(tmp_path, tiny_bert, caplog):
    data = tmp_path / "toy"
    data.mkdir()
    (data / "toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\ta\t0\n")
    (data / "toy.item").write_text(
        "item_id:token\ttitle:token_seq\tbrand:token\tprice:float\n"
        "c\tdrum stick\tacme\t1.0\n"
        "a\tred guitar\tacme\t2.0\n"
        "b\tred guitar\tacme\t3.0\n"
        "x\tblue string\t\t4.0\n"
    )
    settings = dict(item_emb_source="text", data_path=str(tmp_path), text_encoder_path=tiny_bert,
                    text_fields=["title", "brand", "description"], text_batch_size=2,
                    checkpoint_dir=str(tmp_path / "saved"))
    config = tiny_config(**settings)
    dataset = SimpleNamespace(item_num=4, iid_field="item_id",
                              field2id_token={"item_id": np.array(["[PAD]", "a", "b", "c"])})
    with caplog.at_level(logging.INFO):
        emb = load_item_embeddings(config, dataset)
    assert emb.shape == (4, 16) and torch.equal(emb[0], torch.zeros(16))
    assert torch.allclose(emb[1], emb[2], atol=1e-5)  # same text -> same vector
    assert not torch.allclose(emb[1], emb[3], atol=1e-3)
    assert len(os.listdir(tmp_path / "saved" / "item_emb")) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert torch.equal(load_item_embeddings(config, dataset), emb)
    assert "cache hit" in caplog.text

    missing = SimpleNamespace(item_num=3, iid_field="item_id",
                              field2id_token={"item_id": np.array(["[PAD]", "a", "zz"])})
    with pytest.raises(EtegrecError, match="1 of 2 items"):
        load_item_embeddings(tiny_config(**{**settings, "checkpoint_dir": str(tmp_path / "other")}), missing)
    with pytest.raises(EtegrecError, match="toy.item"):
        load_item_embeddings(tiny_config(**{**settings, "data_path": str(tmp_path / "nowhere")}), dataset)
    with pytest.raises(EtegrecError, match="text_encoder_path"):
        load_item_embeddings(tiny_config(**{**settings, "text_encoder_path": str(tmp_path)}), dataset)


def test_cli_reports_user_errors(capsys, tmp_path):
    code = pretrain_main(["--dataset", "no_such_set", "--model", "SASRec", f"--data_path={tmp_path}"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'no_such_set'")


def test_code_logits_equal_the_forward_logits_and_their_gradients():
    """SIA's light path (``code_logits``) is the forward's logits, values and gradients."""
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(3, 16, 8, temperature=0.5)
    z = torch.randn(12, 8, requires_grad=True)
    full = torch.stack(quantizer(z).logits)
    light = quantizer.code_logits(z)
    assert torch.allclose(full, light)
    weights = torch.randn_like(full)
    g_full = torch.autograd.grad((full * weights).sum(), [z, *quantizer.parameters()])
    g_light = torch.autograd.grad((light * weights).sum(), [z, *quantizer.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_full, g_light))


def test_a_key_declared_in_tokenizer_yaml_is_part_of_the_cache_keys(tmp_path, monkeypatch):
    """The cache keys come from properties/tokenizer.yaml itself: declaring a new key there (and
    setting it) gives a new tokenizer cache path, and a new embedding cache path when the key
    belongs to the embedding source, with no list in the code to update."""
    import shutil

    from recbole_etegrec import registry
    from recbole_etegrec.stages import item_embeddings

    copy = tmp_path / "properties"
    shutil.copytree(registry.properties_dir(), copy)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "toy.item").write_text("item_id:token\ttitle:token_seq\na\tred guitar\n")
    base = dict(item_emb_source="text", data_path=str(tmp_path))
    before = tiny_config(**base)
    paths = (tokenizer_cache_path(before), item_embeddings.embedding_cache_path(before))
    monkeypatch.setenv("RECBOLE_ETEGREC_PROPERTIES", str(copy))

    def declare(line):
        with open(copy / "tokenizer.yaml", "a", encoding="utf-8") as f:
            f.write(line + "\n")
        item_embeddings.declared_keys.cache_clear()
        config = tiny_config(**base)
        return tokenizer_cache_path(config), item_embeddings.embedding_cache_path(config)

    try:
        rq = declare("rqvae_new_knob: 1               # (int) An RQ-VAE setting added later.")
        assert rq[0] != paths[0] and rq[1] == paths[1]  # the embeddings do not depend on it
        text = declare("text_new_knob: 1                # (int) A text-embedding setting added later.")
        assert text[0] != rq[0] and text[1] != paths[1]
        changed = tiny_config(**base, rqvae_new_knob=2)
        assert tokenizer_cache_path(changed) != text[0]
        assert item_embeddings.embedding_cache_path(changed) == text[1]
    finally:
        item_embeddings.declared_keys.cache_clear()
