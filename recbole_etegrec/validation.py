"""Config validation that runs in ``Config.__init__``, before any data is read or model trained.

* unknown keys: a key the user gave (file, config_dict, command line) that no property file knows
  (RecBole's defaults for this model/dataset, RecBole's argument lists and the keys its Config
  sets, or any of this plugin's ``properties/**/*.yaml``) is a typo; the error names the closest
  known key. New keys in a property file are known automatically.
* ranges: positive sizes and learning rates, ``code_length`` >= 2, heads that divide the hidden
  size, choices, and ``llama_path`` holding a LLaMA config.
"""
import difflib
import glob
import json
import math
import os
from functools import lru_cache
from typing import Set

import yaml

from recbole_etegrec.errors import EtegrecError

# keys RecBole or the plugin read that no property file lists
_EXTRA_KNOWN = {"model", "dataset", "config_files", "benchmark_filename", "wandb_project", "device",
                "local_rank", "single_spec", "world_size", "nproc", "offset", "ip", "port"}

_POSITIVE_INT = ("epochs", "train_batch_size", "eval_batch_size", "num_beams", "generate_chunk_size",
                 "debug_samples", "MAX_ITEM_LIST_LENGTH", "code_num", "e_dim", "rqvae_epochs",
                 "rqvae_batch_size", "text_batch_size", "sasrec_emb_size", "sasrec_emb_epochs",
                 "sasrec_emb_stopping_step", "finetune_eval_step", "finetune_stopping_step",
                 "lora_r", "lora_alpha", "cycle", "stopping_step", "d_model", "d_kv", "d_ff",
                 "num_heads", "num_encoder_layers", "num_decoder_layers", "n_layers", "n_heads",
                 "hidden_size", "inner_size")
_NON_NEGATIVE = ("warm_epoch", "finetune_epochs", "rqvae_ae_warmup", "rqvae_warmup_epochs",
                 "rqvae_recon_tolerance", "weight_decay",
                 "rqvae_weight_decay", "rqvae_beta", "id_vq_loss", "id_kl_loss", "id_dec_cl_loss",
                 "rec_code_loss", "rec_kl_loss", "rec_dec_cl_loss")
_POSITIVE_FLOAT = ("learning_rate", "lr_rec", "lr_id", "lr_codebook", "finetune_lr", "rqvae_lr", "tau",
                   "code_temperature")
# step counts, or (transformers' convention) a float in (0, 1) = fraction of the schedule's steps
_WARMUP = ("warmup_steps", "rec_warmup_steps", "id_warmup_steps")
_PROBABILITY = ("window_overlap", "lora_dropout", "rqvae_dropout", "dropout_rate", "hidden_dropout_prob",
                "attn_dropout_prob")
_CHOICES = {
    "precision": ("fp32", "bf16", "fp16"),
    "item_emb_source": ("sasrec", "text", "file"),
    "rqvae_emb_norm": ("standard", "l2", "none"),
    "lr_scheduler": ("constant", "inverse_sqrt", "cosine"),
}
_LLAMA_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size")
LLAMA_FAMILY = ("llama",)


@lru_cache(maxsize=None)
def _yaml_keys(folder):
    keys = set()
    for path in glob.glob(os.path.join(folder, "**", "*.yaml"), recursive=True):
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        keys.update(data)
        if os.path.basename(os.path.dirname(path)) == "benchmark":  # common: / <Model>: sections
            for section in data.values():
                keys.update(section if isinstance(section, dict) else ())
    return frozenset(str(k) for k in keys)


def known_keys(config) -> Set[str]:
    from recbole_etegrec.registry import properties_dir

    known = set(config.internal_config_dict) | _EXTRA_KNOWN | _yaml_keys(properties_dir())
    for group in getattr(config, "parameters", {}).values():
        known.update(group)
    return known


def check_unknown_keys(config, sources) -> None:
    known = known_keys(config)
    for key in config.external_config_dict:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "no property file defines it"
        raise EtegrecError(f"unknown config key '{key}' from {sources.get(key, 'the user config')}: {hint} "
                           "(every key must appear in RecBole's or this plugin's property files)")


def _fail(key, value, need, sources):
    where = sources.get(key) or sources.get(key.split(".")[0])  # llama_config.hidden_size -> llama_config
    where = f" from {where}" if where else ""
    raise EtegrecError(f"config key '{key}'{where} must be {need}, got {value!r}: fix its value")


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ranges(config, sources) -> None:
    get = config.final_config_dict.get
    for key in _POSITIVE_INT:
        value = get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            _fail(key, value, "a positive integer", sources)
    for key in _NON_NEGATIVE:
        value = get(key)
        if value is not None and (not _number(value) or not value >= 0 or math.isinf(value)):
            _fail(key, value, ">= 0", sources)
    for key in _POSITIVE_FLOAT:
        value = get(key)
        if value is not None and (not _number(value) or not 0 < value < math.inf):
            _fail(key, value, "a positive number (a learning rate/temperature)", sources)
    for key in _PROBABILITY:
        value = get(key)
        if value is not None and (not _number(value) or not 0 <= value < 1):
            _fail(key, value, "a probability in [0, 1)", sources)
    for key in _WARMUP:
        value = get(key)
        if value is not None and (not _number(value) or value < 0 or math.isinf(value)
                                  or (isinstance(value, float) and value >= 1 and not value.is_integer())):
            _fail(key, value, "a step count >= 0, or a fraction in (0, 1) of the schedule's steps", sources)
    epochs, warmup = get("rqvae_epochs"), get("rqvae_warmup_epochs")
    if isinstance(epochs, int) and isinstance(warmup, int) and warmup >= epochs > 0:
        _fail("rqvae_warmup_epochs", warmup, f"fewer than rqvae_epochs ({epochs}), or the LR never reaches rqvae_lr",
              sources)
    clip = get("clip_grad_norm")
    if clip is not None and not (isinstance(clip, dict) and _number(clip.get("max_norm")) and clip["max_norm"] > 0):
        _fail("clip_grad_norm", clip, "~ (off) or a dict like {max_norm: 1.0} (torch clip_grad_norm_ arguments)",
              sources)
    for key, allowed in _CHOICES.items():
        value = get(key)
        if value is not None and value not in allowed:
            _fail(key, value, f"one of {', '.join(allowed)}", sources)
    code_length = get("code_length")
    if code_length is not None and (not isinstance(code_length, int) or code_length < 2):
        _fail("code_length", code_length, ">= 2 (at least one RQ-VAE level plus the suffix code)", sources)
    if get("optimizer") is not None and get("model") in ("ETEGRec", "TIGER") \
            and get("optimizer") not in ("adamw", "adamw8bit"):
        _fail("optimizer", get("optimizer"), "adamw or adamw8bit", sources)
    eval_step = get("eval_step")
    if isinstance(eval_step, int) and not isinstance(eval_step, bool) and eval_step < 0:
        _fail("eval_step", eval_step, ">= 0 (0: no validation)", sources)
    # RecBole's transformer layers (SASRec, BERT4Rec, ...) split hidden_size over n_heads
    hidden, heads = get("hidden_size"), get("n_heads")
    if get("model") not in ("ETEGRec", "TIGER") and isinstance(hidden, int) and isinstance(heads, int) \
            and hidden % heads:
        _fail("hidden_size", hidden, f"a multiple of n_heads ({heads} attention heads)", sources)
    if get("model") == "ETEGRec":
        _check_llama(config, sources)


def _check_llama(config, sources):
    path = config.final_config_dict.get("llama_path")
    if path:
        check_llama_path(path)
        return
    spec = config.final_config_dict.get("llama_config")
    if not isinstance(spec, dict) or not spec:
        raise EtegrecError("set either llama_path (a local LLaMA checkpoint) or llama_config (a dict of sizes)")
    for key in _LLAMA_SIZES:
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            _fail(f"llama_config.{key}", value, "a positive integer", sources)
    hidden, heads = spec.get("hidden_size"), spec.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and hidden % heads:
        _fail("llama_config.hidden_size", hidden, f"a multiple of num_attention_heads ({heads})", sources)
    kv = spec.get("num_key_value_heads")
    if isinstance(kv, int) and isinstance(heads, int) and heads % kv:
        _fail("llama_config.num_key_value_heads", kv, f"a divisor of num_attention_heads ({heads})", sources)


def check_llama_path(path) -> None:
    """``llama_path`` must be a local folder whose config.json is a LLaMA-family model: any other
    family loads into LlamaModel as random weights with only a transformers warning."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise EtegrecError(
            f"llama_path '{path}' is not a local Hugging Face checkpoint (no config.json): "
            "download it yourself (e.g. meta-llama/Llama-2-7b-hf) and point llama_path at the "
            "folder, or set llama_path: ~ to build from llama_config; nothing is downloaded")
    try:
        with open(config_file, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        raise EtegrecError(f"llama_path '{path}': config.json is not valid JSON: re-save the checkpoint") from None
    if model_type not in LLAMA_FAMILY:
        raise EtegrecError(f"llama_path '{path}' holds a '{model_type}' model, not LLaMA: point it at a "
                           "LLaMA checkpoint (model_type 'llama' in config.json)")


def validate(config, sources) -> None:
    check_unknown_keys(config, sources)
    check_ranges(config, sources)
