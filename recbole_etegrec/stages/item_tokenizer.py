"""The item-tokenizer stage: item embeddings -> normalisation -> RQ-VAE -> code table, run by the
pipeline before any code model is built (``prepare_item_tokenizer``), cached on disk.

The bundle it produces is attached to the training dataset (``dataset.item_tokenizer``); the
models read it from there (``item_tokenizer_of``) and never train anything in their constructor.
Under DDP rank 0 builds (or loads) the cache first, then the other ranks load it.

Cache: ``<checkpoint_dir>/tokenizer/<dataset>-<source>-<hash>.pth``. The hash covers the
embedding settings (``item_embeddings.embedding_settings``), the seed and every key declared in
``properties/tokenizer.yaml`` except the run-only ones and ``MODEL_SIDE_KEYS``: a key added there
is part of the key.
"""
import os
import time
from logging import getLogger

from recbole_etegrec.distributed import main_process_first
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.rng import rng_scope
from recbole_etegrec.stages.item_embeddings import (
    RUN_ONLY_KEYS,
    declared_keys,
    embedding_settings,
    item_tokens,
    load_item_embeddings,
    short_hash,
)
from recbole_etegrec.tokenizer import (
    TokenizerBundle,
    apply_norm,
    fit_norm,
    format_stats,
    load_tokenizer,
    pretrain_rqvae,
    save_bundle,
)

ATTRIBUTE = "item_tokenizer"  # where the bundle travels with the training dataset


# declared in tokenizer.yaml but read by the model, never by pretraining (SIA's temperature)
MODEL_SIDE_KEYS = {"code_temperature"}


def tokenizer_settings(config) -> dict:
    settings = embedding_settings(config)
    settings["tokenizer"] = {k: config[k] for k in declared_keys()
                             if k not in RUN_ONLY_KEYS and k not in MODEL_SIDE_KEYS}
    settings["seed"] = config["seed"]
    return settings


def tokenizer_cache_path(config) -> str:
    settings = tokenizer_settings(config)
    folder = os.path.join(config["checkpoint_dir"], "tokenizer")
    return os.path.join(folder, f"{settings['dataset']}-{settings['source']}-{short_hash(settings)}.pth")


def embed_and_pretrain(config, dataset, logger=None) -> TokenizerBundle:
    """Embeddings -> normalisation -> RQ-VAE (always trains; nothing is read from the cache)."""
    logger = logger or getLogger()
    start = time.time()
    raw = load_item_embeddings(config, dataset)
    emb_seconds = time.time() - start
    norm = fit_norm(raw, config["rqvae_emb_norm"])
    item_emb = apply_norm(raw, norm)
    rqvae, table, stats = pretrain_rqvae(config, item_emb, logger)
    stats = dict(stats, emb_seconds=emb_seconds, item_tokens=item_tokens(dataset))
    return TokenizerBundle(rqvae, table, norm, stats, item_emb)


def load_or_pretrain(config, dataset) -> TokenizerBundle:
    """The tokenizer for this config: ``tokenizer_path`` if set, else the cache, else pretrain + cache.
    Runs in its own random scope: a cache miss (pretraining, maybe a SASRec for the embeddings) and
    a cache hit leave the caller's random stream identical, so both runs train the same way."""
    with rng_scope():
        return _load_or_pretrain(config, dataset)


def _load_or_pretrain(config, dataset):
    logger = getLogger()
    path = config["tokenizer_path"]
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
            bundle = embed_and_pretrain(config, dataset, logger)
            save_bundle(path, bundle)
    _check_bundle(bundle, config, dataset, path)
    if bundle.item_emb is None:  # checkpoints saved without embeddings: recompute (cached) ones
        bundle = bundle._replace(item_emb=bundle.normalize(load_item_embeddings(config, dataset)))
    logger.info(f"tokenizer: {format_stats(bundle.stats)}")
    return bundle


def _check_bundle(bundle, config, dataset, path):
    table, tokens = bundle.code_table, bundle.stats.get("item_tokens")
    if table.n_items != dataset.item_num or (tokens is not None and tokens != item_tokens(dataset)):
        raise EtegrecError(
            f"tokenizer '{path}' was built for other items ({table.n_items} rows) than this dataset "
            f"({dataset.item_num}): delete it or point tokenizer_path at one built for this dataset"
        )
    for key, have in (("code_num", table.code_num), ("code_length", table.code_length)):
        if config[key] != have:
            raise EtegrecError(f"tokenizer '{path}' has {key}={have} but the config says {config[key]}: "
                               f"set {key}={have} or retrain the tokenizer")


def prepare_item_tokenizer(config, dataset) -> TokenizerBundle:
    """The stage: load or pretrain the tokenizer once per process group, attach it to ``dataset``."""
    with main_process_first():  # under DDP rank 0 pretrains/caches, the others then load
        bundle = load_or_pretrain(config, dataset)
    return attach_item_tokenizer(dataset, bundle)


def attach_item_tokenizer(dataset, bundle: TokenizerBundle) -> TokenizerBundle:
    """Hand ``bundle`` to the models built on ``dataset`` (the stage's output)."""
    setattr(dataset, ATTRIBUTE, bundle)
    return bundle


def item_tokenizer_of(dataset) -> TokenizerBundle:
    """The bundle the stage attached to ``dataset``, or one clear error."""
    bundle = getattr(dataset, ATTRIBUTE, None)
    if bundle is None:
        raise EtegrecError("this model needs the item tokenizer stage before it is built: load the data with "
                           "recbole_etegrec.quick_start.load_data(config), or call "
                           "recbole_etegrec.stages.item_tokenizer.prepare_item_tokenizer(config, dataset)")
    return bundle
