"""Config validation that runs in ``Config.__init__``, before any data is read or model trained.

* unknown keys: a key the user gave (file, config_dict, command line) that no property file knows
  (RecBole's defaults for this model/dataset, RecBole's argument lists and the keys its Config
  sets, or any of this plugin's ``properties/**/*.yaml``) is a typo; the error names the closest
  known key. New keys in a property file are known automatically.
* ranges: positive sizes and learning rates, ``code_length`` >= 2, heads that divide the hidden
  size, choices, and ``llama_path`` holding a LLaMA config.
* evaluation (``check_evaluation``, run before RecBole's own checks): ``topk`` positive ints,
  ``metrics`` RecBole's names, ``valid_metric`` one RecBole computes from them, ``eval_args.mode``
  and ``topk`` compatible, and for code models full ranking with ``num_beams`` >= max(topk).
  ``check_topk_items`` adds the one rule that needs the data: ``topk`` below the item count.
* nested keys (``check_nested``, also before RecBole's checks): dict-valued keys merge over their
  defaults (``merge_setting``, used by ``config.py``) and their own keys are checked: ``eval_args``
  (RecBole's), ``train_neg_sample_args``, ``clip_grad_norm`` (torch's), ``load_col``/``unload_col``
  (atomic-file suffixes), ETEGRec's ``llama_config`` (``transformers.LlamaConfig`` fields).
* memory (``check_llama_memory``): ETEGRec's LLaMA is built on the meta device and its training
  memory compared with what the device has free, before any data is read or weight allocated.
"""
import difflib
import glob
import importlib.util
import json
import math
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Set

import yaml
from recbole.evaluator import metric_information, metric_types, metrics_dict

from recbole_etegrec.errors import EtegrecError

if TYPE_CHECKING:
    from transformers import LlamaConfig

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
                 "rec_code_loss", "rec_kl_loss", "rec_dec_cl_loss", "tokenizer_guard_collision",
                 "tokenizer_guard_utilization")
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


# -- evaluation: topk, metrics, valid_metric, eval_args.mode, num_beams ---------------------------
def _origin(config_dict, key, sources, model=None) -> str:
    """Where ``key``'s value came from: the user's source, else the last property file setting it."""
    if key in sources:
        return sources[key]
    from recbole_etegrec.registry import properties_dir

    root = properties_dir()
    model = model or config_dict.get("model")
    files = [config_dict.get("dataset_config_file"), config_dict.get("protocol_file"),
             os.path.join(root, "model", f"{model}.yaml"), os.path.join(root, "tokenizer.yaml"),
             os.path.join(root, "overall.yaml")]
    for file in files:
        if file and os.path.isfile(file) and key in _file_keys(file):
            rel = os.path.relpath(file, os.path.dirname(root))
            return rel if not rel.startswith("..") else file
    return "RecBole's defaults"


@lru_cache(maxsize=None)
def _file_keys(file):
    try:
        with open(file, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return frozenset()
    return frozenset(data) if isinstance(data, dict) else frozenset()


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _at_k(metric) -> bool:
    """RecBole reports this metric per cut-off (``ndcg@10``), not once (``gauc``, ``auc``)."""
    return bool({"rec.topk", "rec.items"} & set(metric_information[metric]))


def _metric_name(name) -> str:
    return metrics_dict[name].__name__  # RecBole's spelling: NDCG, Recall, ItemCoverage


def _closest_metric(name) -> str:
    close = difflib.get_close_matches(str(name).lower(), sorted(metric_types), n=1, cutoff=0.5)
    return f"did you mean '{_metric_name(close[0])}'?" if close else \
        f"RecBole's metrics are {', '.join(sorted(_metric_name(m) for m in metric_types))}"


def _as_list(value):
    """``--metrics=[Recall,NDCG]`` or ``--metrics=Recall,NDCG`` reach the config as one string
    (RecBole cannot evaluate bare names): the list of names they mean."""
    if isinstance(value, str):
        return [part.strip().strip("'\"") for part in value.strip().strip("[]").split(",") if part.strip()]
    return list(value) if isinstance(value, tuple) else value


def _eval_modes(config_dict) -> dict:
    """``eval_args.mode`` as RecBole reads it: ``{"valid": mode, "test": mode}``."""
    eval_args = config_dict.get("eval_args")
    mode = eval_args.get("mode", "full") if isinstance(eval_args, dict) else "full"
    if isinstance(mode, dict):
        default = mode.get("valid", mode.get("test", "full"))
        return {"valid": mode.get("valid", default), "test": mode.get("test", default)}
    return {"valid": mode, "test": mode}


def check_evaluation(config_dict, model_class, sources) -> None:
    """What is measured: runs on RecBole's merged config before RecBole's own checks (which raise
    tracebacks, or accept a ``valid_metric`` no evaluation produces and fail after the first
    epoch). Normalises ``topk: (5, 10)`` and ``metrics: "Recall,NDCG"`` (command-line forms) to lists."""
    model = getattr(model_class, "__name__", None)
    where = lambda key: _origin(config_dict, key, sources, model)  # noqa: E731

    # topk: positive integer cut-offs (an int is RecBole's shorthand for [int])
    topk = config_dict.get("topk")
    if isinstance(topk, tuple):
        topk = config_dict["topk"] = list(topk)
    cutoffs = [topk] if _is_count(topk) else topk
    if not isinstance(cutoffs, list) or not cutoffs or not all(_is_count(k) and k > 0 for k in cutoffs):
        _fail("topk", topk, "a positive integer or a list of them (e.g. [5, 10])", sources)

    # metrics: RecBole's names, case-insensitive, all ranking or all value metrics
    metrics = _as_list(config_dict.get("metrics"))
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        _fail("metrics", config_dict.get("metrics"), "a list of RecBole metric names (e.g. [Recall, NDCG])",
              sources)
    config_dict["metrics"] = metrics
    for metric in metrics:
        if metric.lower() not in metric_types:
            raise EtegrecError(f"config key 'metrics' from {where('metrics')} names '{metric}', which is not a "
                               f"RecBole metric: {_closest_metric(metric)}")
    kinds = {metric_types[m.lower()].name.lower(): m for m in metrics}
    if len(kinds) > 1:
        raise EtegrecError(f"config key 'metrics' from {where('metrics')} mixes a ranking metric "
                           f"({kinds['ranking']}) with a value metric ({kinds['value']}): RecBole evaluates "
                           "one kind per run; keep one kind")
    modes = _eval_modes(config_dict)
    if "value" in kinds and "full" in modes.values():
        raise EtegrecError(f"config key 'metrics' from {where('metrics')} holds the value metric "
                           f"{kinds['value']}, which needs labeled scores, but eval_args.mode is full ranking: "
                           "use ranking metrics (Recall, NDCG, ...) or set eval_args.mode to labeled")

    # eval_args.mode: sampled candidates bound the cut-offs
    for phase, mode in modes.items():
        if _sampled_mode(mode) \
                and max(cutoffs) > int(mode[3:]) and "ranking" in kinds:
            raise EtegrecError(
                f"config key 'topk' from {where('topk')} has cut-off {max(cutoffs)}, but eval_args.mode "
                f"({phase}: {mode}) samples {mode[3:]} negatives per positive, so for a user with one positive "
                f"(leave-one-out) @{max(cutoffs)} ranks every candidate: use cut-offs <= {mode[3:]} or more "
                "negatives")

    # valid_metric: one of the results RecBole computes from metrics x topk
    _check_valid_metric(config_dict, metrics, cutoffs, sources, where)

    if getattr(model_class, "uses_item_codes", False):
        _check_code_model_evaluation(config_dict, model, metrics, cutoffs, modes, where)


def _check_valid_metric(config_dict, metrics, cutoffs, sources, where):
    valid = config_dict.get("valid_metric")
    choices = [f"{_metric_name(m.lower())}@{k}" if _at_k(m.lower()) else _metric_name(m.lower())
               for m in metrics for k in (cutoffs if _at_k(m.lower()) else [None])]
    choices = list(dict.fromkeys(choices))
    pick = f"pick one of {', '.join(choices)}"
    if not isinstance(valid, str) or not valid.strip():
        _fail("valid_metric", valid, f"a metric name like NDCG@10 ({pick})", sources)
    name, at, k = valid.partition("@")
    name = name.lower()  # RecBole's trainer looks up valid_metric.lower() in the results: no spaces
    if name not in metric_types:
        raise EtegrecError(f"config key 'valid_metric' from {where('valid_metric')} is '{valid}', not a RecBole "
                           f"metric: {_closest_metric(name)} ({pick})")
    if name not in {m.lower() for m in metrics}:
        raise EtegrecError(f"config key 'valid_metric' from {where('valid_metric')} is '{valid}', but metrics "
                           f"{metrics} (from {where('metrics')}) does not compute {_metric_name(name)}, so early "
                           f"stopping would fail after the first epoch: add {_metric_name(name)} to metrics or "
                           f"{pick}")
    if not _at_k(name):
        if at:
            raise EtegrecError(f"config key 'valid_metric' from {where('valid_metric')} is '{valid}', but RecBole "
                               f"reports {_metric_name(name)} without a cut-off: set valid_metric to "
                               f"{_metric_name(name)}")
        return
    if not (k.isdigit() and str(int(k)) == k):  # 'NDCG', 'NDCG@ 10', 'NDCG@010': no result has that name
        raise EtegrecError(f"config key 'valid_metric' from {where('valid_metric')} is '{valid}', but RecBole "
                           f"reports {_metric_name(name)} per cut-off, as {_metric_name(name)}@<k> with k in topk: "
                           f"{pick}")
    if int(k) not in cutoffs:
        raise EtegrecError(f"config key 'valid_metric' from {where('valid_metric')} is '{valid}', but topk "
                           f"{config_dict.get('topk')} (from {where('topk')}) has no cut-off {k}, so early "
                           f"stopping would fail after the first epoch: {pick}, or add {k} to topk")


def _sampled_mode(mode) -> bool:
    """RecBole's sampled evaluation: ``uni<N>`` / ``pop<N>`` negatives per positive."""
    return isinstance(mode, str) and mode[:3] in ("uni", "pop") and mode[3:].isdigit()


def _check_code_model_evaluation(config_dict, model, metrics, cutoffs, modes, where):
    """Full ranking is the beam search, which ranks only its ``num_beams`` finished beams over all
    items; every other item scores -inf (``code_model.full_sort_predict``). Sampled modes score
    every candidate by its likelihood (``code_model.predict``), so they take any metric."""
    for phase, mode in modes.items():
        if mode != "full" and not _sampled_mode(mode):
            raise EtegrecError(f"config key 'eval_args' from {where('eval_args')} sets mode {mode!r} for {phase}, "
                               f"but {model} ranks all items by beam search ('full') or sampled candidates by "
                               "likelihood ('uni100', 'pop100', any uniN/popN): set eval_args.mode to one of them")
    if "full" not in modes.values():
        return
    for metric in metrics:
        if not _at_k(metric.lower()):
            raise EtegrecError(f"config key 'metrics' from {where('metrics')} holds {_metric_name(metric.lower())},"
                               f" which ranks every item, but {model}'s beam search scores only num_beams items "
                               "(the rest tie at -inf): use top-k metrics (Recall, NDCG, MRR, Hit, ...)")
    beams = config_dict.get("num_beams")
    if _is_count(beams) and beams > 0 and beams < max(cutoffs):
        raise EtegrecError(
            f"config key 'num_beams' from {where('num_beams')} is {beams}, below the largest 'topk' cut-off "
            f"{max(cutoffs)} (topk {config_dict.get('topk')} from {where('topk')}): beam search returns only "
            f"{beams} items, so metrics @{max(cutoffs)} see at most {beams} ranked items (the rest tie at -inf); "
            f"raise num_beams to >= {max(cutoffs)} or drop the topk cut-offs above {beams}")


def check_topk_items(config, dataset) -> None:
    """Once the item count is known (after the dataset is built, before any loader or model):
    a cut-off that reaches every item counts them all (Recall@k = 1), and one above the
    score matrix's width fails in torch.topk after the first epoch."""
    modes = _eval_modes(config.final_config_dict)
    if "full" not in modes.values() or config["eval_type"] is None or config["eval_type"].name != "RANKING":
        return
    items = dataset.item_num - 1  # id 0 is padding
    largest = max(config["topk"])
    if largest >= items:
        sources = getattr(config, "_key_source", {})
        raise EtegrecError(
            f"config key 'topk' from {_origin(config.final_config_dict, 'topk', sources)} has cut-off {largest}, "
            f"but {dataset.dataset_name} has {items} items, so full ranking @{largest} ranks every item "
            f"(Recall@{largest} = 1): use cut-offs below {items}")


def validate(config, sources) -> None:
    check_unknown_keys(config, sources)
    check_ranges(config, sources)
    check_loggers(config, sources)
    if config.final_config_dict.get("model") == "ETEGRec":
        check_llama_memory(config, sources)


def check_loggers(config, sources) -> None:
    """RecBole imports wandb only once the trainer is built (a traceback after the data and the
    tokenizer stage); the optional extra is checked here instead."""
    if config["log_wandb"] is True and importlib.util.find_spec("wandb") is None:
        raise EtegrecError(f"config key 'log_wandb' from {_origin(config.final_config_dict, 'log_wandb', sources)} "
                           "is True, but wandb is not installed: pip install -e '.[wandb]' (or pip install wandb), "
                           "or set log_wandb to False")


# -- nested settings: dict-valued keys merge over their defaults; their own keys are checked ------
# A dict over a dict merges one level deep (later layer wins per nested key; a nested value such as
# eval_args.split is replaced whole); anything else (None, a scalar) replaces. ``threshold`` is one
# {field: value} choice (RecBole refuses two), so a new one replaces the default.
_REPLACED_DICTS = frozenset({"threshold"})
_EVAL_ARGS = ("split", "order", "group_by", "mode")  # RecBole's eval_args (overall.yaml, Config)
_SPLITS = {"RS": "a list of ratios, e.g. [0.8, 0.1, 0.1]", "TS": "a list of ratios, e.g. [0.8, 0.1, 0.1]",
           "LS": "valid_and_test, valid_only or test_only"}
_LEAVE_ONE_OUT = ("valid_and_test", "valid_only", "test_only")
_ORDERS = ("RO", "TO")
_GROUP_BY = ("user", "none", None)
_EVAL_PHASES = ("valid", "test")
_NEG_SAMPLE_ARGS = ("distribution", "sample_num", "alpha", "dynamic", "candidate_num")  # RecBole's Config
_FEATURE_FILES = ("inter", "user", "item", "kg", "link", "net", "ent")  # RecBole's atomic-file suffixes
# from-scratch builds feed inputs_embeds only: backbone.build_llama sets these itself
_LLAMA_FIXED = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
MEMORY_CHECK_ENV = "RECBOLE_ETEGREC_NO_MEMORY_CHECK"


def merge_setting(key, default, value) -> Any:
    """``value`` layered over ``default``: dicts merge one level deep (a partial ``llama_config``
    keeps the other default sizes), anything else replaces. Never mutates either argument."""
    if isinstance(default, dict) and isinstance(value, dict) and key not in _REPLACED_DICTS:
        return {**default, **value}
    return dict(value) if isinstance(value, dict) else value


def _nested_source(config_dict, key, sub, sources, model):
    return sources.get(f"{key}.{sub}") or _origin(config_dict, key, sources, model)


def _unknown_nested(key, sub, known, source, what, merged=True):
    close = difflib.get_close_matches(str(sub), sorted(map(str, known)), n=1, cutoff=0.6)
    listed = sorted(str(k) for k in known)
    hint = f"did you mean '{close[0]}'?" if close else \
        f"it takes {', '.join(listed)}" if len(listed) <= 12 else "no such key"
    note = "; keys left out keep their defaults" if merged else ""
    raise EtegrecError(f"unknown key '{sub}' in config key '{key}' from {source}: {hint} ({what}{note})")


@lru_cache(maxsize=None)
def llama_fields() -> frozenset:
    """What ``transformers.LlamaConfig`` reads: its fields (``to_dict``) and ``__init__`` arguments,
    with those of ``PretrainedConfig``, whatever this transformers version calls them."""
    import inspect

    from transformers import LlamaConfig, PretrainedConfig

    names = set(LlamaConfig().to_dict()) | set(getattr(LlamaConfig, "attribute_map", {}))
    for cls in (LlamaConfig, PretrainedConfig):
        names.update(name for name, p in inspect.signature(cls.__init__).parameters.items()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    return frozenset(names - {"self"})


def _llama_reads(key, value) -> bool:
    """A key ``LlamaConfig`` consumes without keeping it under that name (rope_theta and
    rope_scaling fold into rope_parameters in transformers 5): not a typo. Unknown keys are stored
    as attributes, silently."""
    from transformers import LlamaConfig

    try:
        cfg = LlamaConfig(**{key: value})
    except Exception:  # noqa: BLE001  (it read the value and rejected it: a field)
        return True
    return key not in cfg.to_dict()


def _data_files(config_dict, dataset):
    """Atomic-file suffixes present for ``dataset`` (RecBole reads ml-100k from its own wheel)."""
    import recbole

    folders = [os.path.join(str(config_dict.get("data_path") or ""), str(dataset)),
               os.path.join(os.path.dirname(recbole.__file__), "dataset_example", str(dataset))]
    suffixes = set()
    for folder in folders:
        for path in glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(str(dataset))}.*")):
            suffixes.add(os.path.basename(path)[len(str(dataset)) + 1:])
    return suffixes


def check_nested(config_dict, model_class, dataset, sources) -> None:
    """Every nested key of RecBole's merged config, before RecBole reads it (its ``eval_args``
    handling drops unknown mode keys): ``eval_args`` (RecBole's four keys and their values),
    ``train_neg_sample_args`` (RecBole's five), ``clip_grad_norm`` (torch's ``clip_grad_norm_``
    arguments), ``load_col``/``unload_col`` (atomic-file suffixes) and, for ETEGRec,
    ``llama_config`` (``transformers.LlamaConfig`` fields)."""
    model = getattr(model_class, "__name__", None)
    src = lambda key, sub=None: _nested_source(config_dict, key, sub, sources, model)  # noqa: E731

    def need_dict(key, example):
        value = config_dict.get(key)
        if value is not None and not isinstance(value, dict):
            raise EtegrecError(f"config key '{key}' from {src(key)} must be a mapping like {example} (~ for "
                               f"none), got {value!r}: fix its value")
        return value or {}

    eval_args = config_dict.get("eval_args")
    if not isinstance(eval_args, dict):
        raise EtegrecError(f"config key 'eval_args' from {src('eval_args')} must be a mapping like "
                           "{split: {LS: valid_and_test}, order: TO, group_by: user, mode: full}, got "
                           f"{eval_args!r}: fix its value")
    for sub in eval_args:
        if sub not in _EVAL_ARGS:
            _unknown_nested("eval_args", sub, _EVAL_ARGS, src("eval_args", sub), "RecBole's eval_args")
    _check_eval_args(eval_args, lambda sub: src("eval_args", sub))

    for sub in need_dict("train_neg_sample_args", "{distribution: uniform, sample_num: 1}"):
        if sub not in _NEG_SAMPLE_ARGS:
            _unknown_nested("train_neg_sample_args", sub, _NEG_SAMPLE_ARGS, src("train_neg_sample_args", sub),
                            "RecBole's negative sampling arguments")
    clip_args = _clip_grad_norm_args()
    for sub in need_dict("clip_grad_norm", "{max_norm: 1.0}"):
        if sub not in clip_args:
            _unknown_nested("clip_grad_norm", sub, clip_args, src("clip_grad_norm", sub),
                            "torch.nn.utils.clip_grad_norm_ arguments")
    for key in ("load_col", "unload_col"):
        files = need_dict(key, "{inter: [user_id, item_id, timestamp]}")
        if not files:
            continue
        known = set(_FEATURE_FILES) | _data_files(config_dict, dataset)
        extra = config_dict.get("additional_feat_suffix") or []
        known.update([extra] if isinstance(extra, str) else extra)
        for sub in files:
            if sub not in known:
                _unknown_nested(key, sub, known, src(key, sub), f"atomic-file suffixes of {dataset}")
    if model == "ETEGRec":
        spec = config_dict.get("llama_config")
        if isinstance(spec, dict):
            fields = llama_fields()
            for sub, value in spec.items():
                if sub not in fields and not _llama_reads(sub, value):
                    _unknown_nested("llama_config", sub, fields, src("llama_config", sub),
                                    "llama_config takes transformers.LlamaConfig fields")
                if sub in _LLAMA_FIXED and not config_dict.get("llama_path"):
                    raise EtegrecError(f"config key 'llama_config.{sub}' from {src('llama_config', sub)} is set by "
                                       "the plugin (the backbone reads inputs_embeds only, so it has no token "
                                       f"vocabulary): remove {sub} from llama_config")


def _check_eval_args(eval_args, src):
    def bad(sub, value, need):
        raise EtegrecError(f"config key 'eval_args.{sub}' from {src(sub)} must be {need}, got {value!r}: "
                           "fix its value")

    split = eval_args.get("split")
    if "split" in eval_args and split is not None:
        if not isinstance(split, dict) or len(split) != 1:
            bad("split", split, "one of {LS: valid_and_test}, {RS: [0.8, 0.1, 0.1]} or {TS: [...]}")
        (mode, value), = split.items()
        if mode not in _SPLITS:
            _unknown_nested("eval_args.split", mode, _SPLITS, src("split"), "RecBole's split modes", merged=False)
        if mode == "LS" and value not in _LEAVE_ONE_OUT:
            bad("split", split, f"{{LS: {' | '.join(_LEAVE_ONE_OUT)}}}")
        if mode in ("RS", "TS") and not (isinstance(value, list) and value and all(map(_number, value))):
            bad("split", split, f"{{{mode}: {_SPLITS[mode]}}}")
    if "order" in eval_args and eval_args["order"] not in _ORDERS:
        bad("order", eval_args["order"], "RO (random order) or TO (time order)")
    group_by = eval_args.get("group_by")
    if "group_by" in eval_args and not (group_by in _GROUP_BY or str(group_by).lower() == "none"):
        bad("group_by", group_by, "user or none")
    mode = eval_args.get("mode")
    if isinstance(mode, dict):
        for phase in mode:
            if phase not in _EVAL_PHASES:
                _unknown_nested("eval_args.mode", phase, _EVAL_PHASES, src("mode"), "RecBole's evaluation phases",
                                merged=False)
    elif "mode" in eval_args and not isinstance(mode, str):
        bad("mode", mode, "full, labeled, uni<N>, pop<N> or {valid: ..., test: ...}")


@lru_cache(maxsize=None)
def _clip_grad_norm_args() -> tuple:
    import inspect

    import torch

    params = inspect.signature(torch.nn.utils.clip_grad_norm_).parameters
    return tuple(name for name in params if name != "parameters")


# -- memory: the LLaMA's size against the machine's, before anything is allocated ----------------
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def _gb(n) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def llama_build_config(config_dict) -> "LlamaConfig":
    """The ``LlamaConfig`` the backbone will be built from (mirrors ``backbone.build_llama``):
    ``llama_path``'s config.json, else the merged ``llama_config``."""
    from transformers import LlamaConfig

    path = config_dict.get("llama_path")
    if path:
        return LlamaConfig.from_pretrained(path, local_files_only=True)
    spec = dict(config_dict.get("llama_config") or {})
    return LlamaConfig(vocab_size=2, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                       max_position_embeddings=spec.pop("max_position_embeddings", 1024), **spec)


def llama_memory(config_dict) -> dict:
    """Parameters of the backbone (built on the meta device: no memory) and the bytes training
    needs, by this rule: trainable parameters x 4 copies (weights, gradients, two AdamW moments)
    x their bytes, plus frozen parameters once; LoRA adapters (peft keeps them in fp32) are the only
    trainable ones under ``lora``; the frozen token-embedding stub counts once. A from-scratch
    backbone is built in fp32 before its cast, so it needs at least params x 4 bytes. Activations
    are not counted: the real peak is higher."""
    import torch
    from transformers import LlamaModel

    cfg = llama_build_config(config_dict)
    with torch.device("meta"):
        model = LlamaModel(cfg)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed_tokens.weight.numel()
    width = _DTYPE_BYTES.get(config_dict.get("precision"), 4)
    if config_dict.get("lora"):
        targets = set(config_dict.get("lora_target_modules") or ())
        rank = config_dict.get("lora_r") or 0
        trainable = sum(rank * (module.in_features + module.out_features) for name, module in model.named_modules()
                        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets)
        need = trainable * 4 * 4 + total * width
    else:
        trainable = total - embedding
        need = trainable * 4 * width + embedding * width
    if not config_dict.get("llama_path"):
        need = max(need, total * 4)
    return {"params": total, "trainable": trainable, "bytes": need, "width": width}


def _read_int(path):
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def available_memory(device) -> tuple:
    """(bytes, what they are) the model may use on ``device``: a GPU's free memory, or on the CPU
    the kernel's MemAvailable (psutil where /proc/meminfo is absent), capped by a cgroup limit.
    (None, reason) when it cannot be read."""
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        index = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        return free, f"free on GPU {index} ({torch.cuda.get_device_name(index)})"
    found, what = None, None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found, what = int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError):
        pass
    if found is None:
        try:
            import psutil

            found, what = psutil.virtual_memory().available, "available memory (psutil)"
        except ImportError:
            return None, "no /proc/meminfo or psutil"
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit - usage < found:
            found, what = max(limit - usage, 0), f"left under the cgroup limit ({limit_file})"
    return found, what


def check_llama_memory(config, sources) -> None:
    """Stop before the backbone is allocated when training it cannot fit: one line with both
    numbers and the fix. Under torchrun on the CPU every local process builds its own copy.
    ``RECBOLE_ETEGREC_NO_MEMORY_CHECK=1`` skips it (e.g. swap the estimate cannot see)."""
    if os.environ.get(MEMORY_CHECK_ENV):
        return
    config_dict = config.final_config_dict
    try:
        estimate = llama_memory(config_dict)
    except EtegrecError:
        raise
    except Exception as err:  # noqa: BLE001  transformers rejects the settings themselves
        origin = "llama_path" if config_dict.get("llama_path") else "llama_config"
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EtegrecError(f"config key '{origin}' from {_origin(config_dict, origin, sources)} gives a LLaMA "
                           f"transformers cannot build ({detail}): fix its value") from None
    device = config_dict.get("device")
    available, what = available_memory(device)
    if available is None:
        return
    on_cpu = getattr(device, "type", str(device)) != "cuda"
    copies = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if on_cpu else 1
    need = estimate["bytes"] * max(copies, 1)
    if need <= available:
        return
    lora = bool(config_dict.get("lora"))
    rule = (f"{estimate['trainable'] / 1e6:.1f}M LoRA adapter parameters x 4 (weights, gradients, 2 AdamW "
            f"moments) x 4 bytes + {estimate['params'] / 1e9:.2f}B frozen x {estimate['width']} bytes" if lora else
            f"{estimate['trainable'] / 1e9:.2f}B trainable parameters x 4 (weights, gradients, 2 AdamW moments) "
            f"x {estimate['width']} bytes ({config_dict.get('precision')})")
    rule += f", x {copies} processes" if copies > 1 else ""
    if config_dict.get("llama_path"):
        origin = f"llama_path '{config_dict['llama_path']}'"
        fix = ("train LoRA adapters in bf16 (--config_files properties/llama2-7b.yaml) on a GPU with enough "
               "memory" if not lora else "use a GPU with more free memory or a smaller checkpoint")
    else:
        origin = f"llama_config from {_origin(config_dict, 'llama_config', sources)}"
        fix = "shrink llama_config (hidden_size, num_hidden_layers, intermediate_size)"
    raise EtegrecError(f"the LLaMA backbone ({origin}) has {estimate['params'] / 1e9:.2f}B parameters: training "
                       f"needs about {_gb(need)} ({rule}; activations not counted) but only {_gb(available)} is "
                       f"available ({what}): {fix}, or set {MEMORY_CHECK_ENV}=1 to skip this check")
