"""Standalone RQ-VAE pretraining, the tokenizer cache, and the command line.

    python -m recbole_etegrec.tokenizer.pretrain --dataset Instruments [--model ETEGRec]
        [--config_files a.yaml,b.yaml] [--key=value ...]

always retrains and writes the result where ETEGRec/TIGER runs with the same settings look for it
(``tokenizer_cache_path``). Its last output line is
``collision_rate=<float> utilization=<l0>,<l1>,<l2> max_suffix=<int>``.
"""
import argparse
import copy
import math
import os
import sys
import time
from logging import getLogger
from typing import NamedTuple, Optional

import torch

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import atomic_torch_save, remove_stale_tmp
from recbole_etegrec.rng import rng_scope
from recbole_etegrec.tokenizer.code_table import CodeTable, build_code_table
from recbole_etegrec.tokenizer.embeddings import (
    cfg,
    check_finite,
    embedding_settings,
    item_tokens,
    load_item_embeddings,
    short_hash,
)
from recbole_etegrec.tokenizer.rqvae import RQVAE

NORM_KINDS = ("standard", "l2", "none")
# Settings that change the pretrained tokenizer (besides the embedding settings).
_RQVAE_KEYS = (
    "code_num", "code_length", "e_dim", "rqvae_hidden", "rqvae_dropout", "rqvae_beta", "code_temperature",
    "rqvae_epochs", "rqvae_lr", "rqvae_batch_size", "rqvae_weight_decay", "rqvae_kmeans_init",
    "rqvae_reseed_dead", "rqvae_emb_norm", "rqvae_ae_warmup", "seed",
)
_FORMAT = 1


class TokenizerBundle(NamedTuple):
    rqvae: RQVAE
    code_table: CodeTable
    embeddings_norm: Optional[dict]  # how raw item embeddings are normalised before the RQ-VAE
    stats: dict
    item_emb: Optional[torch.Tensor]  # [item_num, d] normalised embeddings the RQ-VAE was trained on

    def normalize(self, emb):
        """Apply this tokenizer's input normalisation to raw item embeddings [N, d]."""
        return apply_norm(emb, self.embeddings_norm)


# -- normalisation ----------------------------------------------------------------------------
def fit_norm(embeddings, kind):
    """Normalisation statistics from the real items (rows 1..); None for 'none'."""
    if kind not in NORM_KINDS:
        raise EtegrecError(f"rqvae_emb_norm '{kind}' is unknown: use one of {', '.join(NORM_KINDS)}")
    if kind == "none":
        return None
    if kind == "l2":
        return {"kind": "l2"}
    real = embeddings[1:].float()
    return {"kind": "standard", "mean": real.mean(0), "std": real.std(0).clamp(min=1e-6)}


def apply_norm(emb, norm):
    """Normalised copy of ``emb``; rows that are all zero (the padding row) stay zero."""
    emb = emb.float()
    if norm is None:
        return emb.clone()
    pad = emb.abs().sum(1, keepdim=True) == 0
    if norm["kind"] == "l2":
        out = torch.nn.functional.normalize(emb, dim=1)
    else:
        out = (emb - norm["mean"].to(emb)) / norm["std"].to(emb)
    return out.masked_fill(pad, 0.0)


# -- pretraining ------------------------------------------------------------------------------
def code_stats(codes, code_num):
    """Collision rate, largest group, per-level utilisation and perplexity of codes [N, levels]."""
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    collision = float((counts[inverse] > 1).float().mean())
    util, ppl = [], []
    for level in range(codes.shape[1]):
        hist = torch.bincount(codes[:, level], minlength=code_num).float()
        p = hist / hist.sum()
        util.append(float((hist > 0).float().mean()))
        ppl.append(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())))
    return collision, int(counts.max()), util, ppl


@torch.no_grad()
def _evaluate(model, x, batch_size=4096):
    """Eval-mode loss over all items and their hard codes (exactly what ``get_codes`` returns)."""
    model.eval()
    total, codes, zs = 0.0, [], []
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        total += float(out.loss) * len(out.z)
        codes.append(out.quant.codes)
        zs.append(out.z)
    model.train()
    return total / len(x), torch.cat(codes), torch.cat(zs)


def _device(config):
    device = cfg(config, "device")
    return device if isinstance(device, torch.device) else torch.device("cpu")


def pretrain_rqvae(config, embeddings, logger=None):
    """Train an RQ-VAE on ``embeddings`` [item_num, d] (row 0 = padding, skipped; pass them already
    normalised). Returns (rqvae on CPU, CodeTable, stats) for the epoch with the lowest collision
    rate (ties: lower loss)."""
    from tqdm import tqdm

    logger = logger or getLogger()
    start = time.time()
    device = _device(config)
    x = embeddings[1:].float().to(device)
    if len(x) == 0:
        raise EtegrecError("no items to tokenize: the dataset has no real items")
    check_finite(x, "the item embeddings")
    _check_distinct(x, config["code_num"])
    code_num, seed = config["code_num"], cfg(config, "seed", 2020)
    epochs, batch_size = config["rqvae_epochs"], config["rqvae_batch_size"]
    # fork the RNG: pretraining inside a model's __init__ must not shift the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = RQVAE.from_config(config, x.shape[1]).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=config["rqvae_lr"],
                                weight_decay=cfg(config, "rqvae_weight_decay", 0.0))
        # plain autoencoder warm-up: the latent reaches its working scale before k-means places the
        # codebooks on it (k-means on a random encoder's tiny outputs leaves most codes stranded)
        for _ in range(cfg(config, "rqvae_ae_warmup", 0)):
            perm = torch.randperm(len(x), generator=gen).to(device)
            for i in range(0, len(x), batch_size):
                xb = x[perm[i:i + batch_size]]
                loss = torch.nn.functional.mse_loss(model.decoder(model.encoder(xb)), xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if cfg(config, "rqvae_kmeans_init", True):
            model.quantizer.kmeans_init(_evaluate(model, x)[2], seed=seed)
        initial_loss = _evaluate(model, x)[0]
        # no re-seeding in the last ~10% of epochs: the kept codebooks must have settled after it
        reseed_until = int(epochs * 0.9) if cfg(config, "rqvae_reseed_dead", True) else 0
        best, best_key = None, None
        bar = tqdm(range(epochs), desc="RQ-VAE", ncols=100, disable=not cfg(config, "show_progress", False))
        for epoch in bar:
            model.train()
            perm = torch.randperm(len(x), generator=gen).to(device)
            for i in range(0, len(x), batch_size):
                loss = model(x[perm[i:i + batch_size]]).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            loss, codes, z = _evaluate(model, x)
            if not math.isfinite(loss):
                raise EtegrecError(f"RQ-VAE loss became {loss} at epoch {epoch} (rqvae_lr={config['rqvae_lr']}): "
                                   "lower rqvae_lr or check the item embeddings")
            collision, largest, util, ppl = code_stats(codes, code_num)
            if best_key is None or (collision, loss) < best_key:
                best_key = (collision, loss)
                best = dict(epoch=epoch, loss=loss, collision_rate=collision, utilization=util, perplexity=ppl,
                            largest_group=largest, state=copy.deepcopy(model.state_dict()))
            reseeded = model.quantizer.reseed_dead_codes(z, generator=gen) if epoch < reseed_until else []
            bar.set_postfix(loss=f"{loss:.4f}", coll=f"{collision:.4f}")
            logger.info(
                f"rqvae epoch {epoch}: loss {loss:.5f} collision {collision:.4f} util "
                f"{','.join(f'{u:.3f}' for u in util)} ppl {','.join(f'{p:.1f}' for p in ppl)}"
                + (f" reseeded {reseeded}" if any(reseeded) else "")
            )
    model.load_state_dict(best.pop("state"))
    model = model.cpu().eval()
    table = build_code_table(model.get_codes(x.cpu()), code_num)  # raises if a group exceeds code_num
    stats = dict(collision_rate=table.collision_rate(), utilization=best["utilization"],
                 perplexity=best["perplexity"], max_suffix=table.max_suffix, epochs=epochs,
                 best_epoch=best["epoch"], loss=best["loss"], initial_loss=initial_loss, seconds=time.time() - start, n_items=len(x))
    logger.info(f"rqvae: kept epoch {best['epoch']}: " + format_stats(stats))
    return model, table, stats


def _check_distinct(x, code_num):
    """Items with identical embeddings get identical semantic codes whatever the RQ-VAE learns; more
    than ``code_num`` of them cannot be told apart by the suffix code: a data problem, not training."""
    _, counts = torch.unique(x, dim=0, return_counts=True)
    if int(counts.max()) > code_num:
        raise EtegrecError(f"{int(counts.max())} items share one identical embedding (more than code_num={code_num}): "
                           "the item embeddings are degenerate; check item_emb_file / item_emb_source")


def format_stats(stats):
    util = ",".join(f"{u:.4f}" for u in stats["utilization"])
    return f"collision_rate={stats['collision_rate']:.6f} utilization={util} max_suffix={stats['max_suffix']}"


# -- checkpoint and cache ---------------------------------------------------------------------
def tokenizer_settings(config):
    settings = embedding_settings(config)
    settings["rqvae"] = {k: cfg(config, k) for k in _RQVAE_KEYS}
    return settings


def tokenizer_cache_path(config):
    """``<checkpoint_dir>/tokenizer/<dataset>-<source>-<hash>.pth``; the hash covers the embedding
    settings (including the data files) and every RQ-VAE setting."""
    settings = tokenizer_settings(config)
    folder = os.path.join(cfg(config, "checkpoint_dir", "saved"), "tokenizer")
    return os.path.join(folder, f"{settings['dataset']}-{settings['source']}-{short_hash(settings)}.pth")


def save_tokenizer(path, rqvae, code_table, stats, norm, item_emb=None, tokens=None):
    """Atomic write of everything needed to rebuild the tokenizer without its config."""
    state = {
        "format": _FORMAT, "arch": rqvae.arch, "state_dict": rqvae.state_dict(),
        "code_table": code_table.state_dict(), "stats": stats, "norm": norm,
        "item_emb": item_emb, "item_tokens": list(tokens) if tokens is not None else None,
    }
    remove_stale_tmp(os.path.dirname(os.path.abspath(path)))
    atomic_torch_save(state, path)


def load_tokenizer(path):
    """TokenizerBundle from a file written by ``save_tokenizer`` (tensors and plain types only)."""
    if not os.path.isfile(path):
        raise EtegrecError(f"tokenizer checkpoint '{path}' does not exist: fix tokenizer_path or unset it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user problem
        raise EtegrecError(f"tokenizer checkpoint '{path}' cannot be read ({type(err).__name__}): "
                           "regenerate it with `python -m recbole_etegrec.tokenizer.pretrain`") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise EtegrecError(f"'{path}' is not a tokenizer checkpoint of this version: regenerate it with "
                           "`python -m recbole_etegrec.tokenizer.pretrain`")
    with rng_scope():  # the module's random init must not shift the training run's stream
        rqvae = RQVAE(**state["arch"])
    rqvae.load_state_dict(state["state_dict"])
    rqvae.eval()
    stats = dict(state["stats"], item_tokens=state["item_tokens"])
    return TokenizerBundle(rqvae, CodeTable.from_state_dict(state["code_table"]), state["norm"], stats,
                           state["item_emb"])


def _check_bundle(bundle, config, dataset, path):
    table, tokens = bundle.code_table, bundle.stats.get("item_tokens")
    if table.n_items != dataset.item_num or (tokens is not None and tokens != item_tokens(dataset)):
        raise EtegrecError(
            f"tokenizer '{path}' was built for other items ({table.n_items} rows) than this dataset "
            f"({dataset.item_num}): delete it or point tokenizer_path at one built for this dataset"
        )
    for key, have in (("code_num", table.code_num), ("code_length", table.code_length)):
        if cfg(config, key) is not None and config[key] != have:
            raise EtegrecError(f"tokenizer '{path}' has {key}={have} but the config says {config[key]}: "
                               f"set {key}={have} or retrain the tokenizer")


def embed_and_pretrain(config, dataset, logger=None):
    """Embeddings -> normalisation -> RQ-VAE; returns (TokenizerBundle, embedding seconds)."""
    logger = logger or getLogger()
    start = time.time()
    raw = load_item_embeddings(config, dataset)
    emb_seconds = time.time() - start
    norm = fit_norm(raw, cfg(config, "rqvae_emb_norm", "standard"))
    item_emb = apply_norm(raw, norm)
    rqvae, table, stats = pretrain_rqvae(config, item_emb, logger)
    stats = dict(stats, emb_seconds=emb_seconds, item_tokens=item_tokens(dataset))
    return TokenizerBundle(rqvae, table, norm, stats, item_emb), emb_seconds


def save_bundle(path, bundle):
    stats = {k: v for k, v in bundle.stats.items() if k != "item_tokens"}
    save_tokenizer(path, bundle.rqvae, bundle.code_table, stats, bundle.embeddings_norm, bundle.item_emb,
                   bundle.stats.get("item_tokens"))


def load_or_pretrain(config, dataset):
    """The tokenizer for this config: ``tokenizer_path`` if set, else the cache, else pretrain + cache.
    Runs in its own random scope: a cache miss (pretraining, maybe a SASRec for the embeddings) and
    a cache hit leave the caller's random stream identical, so both runs train the same way."""
    with rng_scope():
        return _load_or_pretrain(config, dataset)


def _load_or_pretrain(config, dataset):
    logger = getLogger()
    path = cfg(config, "tokenizer_path")
    if path:
        logger.info(f"tokenizer: loading tokenizer_path {path}")
        bundle = load_tokenizer(path)
    else:
        path = tokenizer_cache_path(config)
        bundle = None
        if os.path.isfile(path):
            try:
                bundle = load_tokenizer(path)
                logger.info(f"tokenizer: cache hit {path}")
            except EtegrecError as err:  # a corrupt cache is rebuilt, not a dead end
                logger.warning(f"tokenizer: cache {path} is unusable ({err}); pretraining it again")
        if bundle is None:
            logger.info(f"tokenizer: cache miss, pretraining the RQ-VAE -> {path}")
            bundle, _ = embed_and_pretrain(config, dataset, logger)
            save_bundle(path, bundle)
    _check_bundle(bundle, config, dataset, path)
    if bundle.item_emb is None:  # checkpoints saved without embeddings: recompute (cached) ones
        bundle = bundle._replace(item_emb=bundle.normalize(load_item_embeddings(config, dataset)))
    logger.info(f"tokenizer: {format_stats(bundle.stats)}")
    return bundle


# -- command line -----------------------------------------------------------------------------
def _build_config(model, dataset, config_files, cmd_args):
    from recbole_etegrec.config import Config
    from recbole_etegrec.utils import properties_dir

    config = Config(model=model, dataset=dataset, config_file_list=config_files, cmd_args=cmd_args)
    if config["code_num"] is None:  # a model without item codes: layer the tokenizer defaults in
        files = [os.path.join(properties_dir(), "tokenizer.yaml"), *config_files]
        config = Config(model=model, dataset=dataset, config_file_list=files, cmd_args=cmd_args)
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m recbole_etegrec.tokenizer.pretrain",
        description="Pretrain the RQ-VAE item tokenizer and write it to the tokenizer cache.",
        epilog="Any other --key=value overrides a config key, e.g. --item_emb_source=text --rqvae_epochs=300.",
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="ETEGRec", help="model whose config is used (default ETEGRec)")
    parser.add_argument("--config_files", default="", help="comma-separated YAML files")
    args, rest = parser.parse_known_args(argv)
    try:
        from recbole.utils import init_logger, init_seed

        from recbole_etegrec.data import create_dataset, data_preparation

        files = [f for f in args.config_files.split(",") if f]
        config = _build_config(args.model, args.dataset, files, rest)
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        logger = getLogger()
        train_data, _, _ = data_preparation(config, create_dataset(config))
        dataset = train_data._dataset
        path = tokenizer_cache_path(config)
        bundle, emb_seconds = embed_and_pretrain(config, dataset, logger)
        save_bundle(path, bundle)
        stats = bundle.stats
        logger.info(f"tokenizer saved to {path}")
        logger.info(f"embedding seconds {emb_seconds:.1f}, RQ-VAE seconds {stats['seconds']:.1f}, "
                    f"perplexity {','.join(f'{p:.1f}' for p in stats['perplexity'])}")
    except EtegrecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_stats(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
