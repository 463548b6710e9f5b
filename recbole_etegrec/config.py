"""``Config``: RecBole's Config with the plugin's property files layered in.

Order, later wins: RecBole defaults -> properties/overall.yaml -> (code models: properties/tokenizer.yaml)
-> properties/model/<Model>.yaml
-> properties/dataset/<dataset>.yaml -> user ``config_file_list`` -> ``config_dict`` -> ``--key=value``.
A dict-valued key merges over the layer below one level deep (``llama_config: {num_hidden_layers: 1}``
keeps the other default sizes; a nested value such as ``eval_args.split`` is replaced whole; ``~`` or a
scalar replaces the dict), and its nested keys are checked (``validation.check_nested``).
Values are type-checked against their defaults, and YAML errors name the file.
"""
import os

import yaml
from recbole.config import Config as RecBoleConfig

from recbole_etegrec import compat, distributed
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.registry import get_model, properties_dir
from recbole_etegrec.validation import check_evaluation, check_nested, merge_setting, validate

# Keys whose RecBole default has one type but that legitimately take several.
_FLEXIBLE_KEYS = {
    "topk", "metrics", "gpu_id", "eval_args", "train_neg_sample_args", "valid_neg_sample_args",
    "test_neg_sample_args", "load_col", "unload_col", "unused_col", "val_interval", "threshold",
    "seq_len", "normalize_field", "numerical_features", "user_inter_num_interval",
    "item_inter_num_interval", "clip_grad_norm", "data_path", "checkpoint_dir", "eval_step",
    "warmup_steps", "rec_warmup_steps", "id_warmup_steps",  # int steps or float fraction (validation.py)
    "llama_config", "benchmark_models",
}

# Keys that never change what is computed: where things are written, logging, devices, processes.
RUN_ONLY_KEYS = {
    "checkpoint_dir", "show_progress", "use_gpu", "gpu_id", "device", "state", "log_wandb", "wandb_project",
    "local_rank", "single_spec", "world_size", "nproc", "offset", "ip", "port", "data_path", "log_tensorboard",
    "tokenizer_path", "benchmark_filename", "worker", "eval_batch_size", "resume_file", "resume_allow_change",
    "protocol_file", "dataset_config_file", "config_files",
}
# Keys a resumed run may change (besides RUN_ONLY_KEYS): how long it trains and how often it validates.
RESUME_FREE_KEYS = RUN_ONLY_KEYS | {
    "epochs", "stopping_step", "eval_step", "finetune_epochs", "finetune_stopping_step", "finetune_eval_step",
}


class Config(RecBoleConfig):
    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 cmd_args=None):
        """``cmd_args``: ``--key=value`` strings. Unlike RecBole's Config, ``sys.argv`` is never
        read implicitly (a test runner's or Ray worker's argv is not a config)."""
        compat.apply()
        self._key_source = {}
        self._cmd_args = list(cmd_args or [])
        try:
            super().__init__(model, dataset, config_file_list, config_dict)
        except ValueError as err:  # RecBole's own consistency checks (e.g. CE loss with negatives)
            raise EtegrecError(f"invalid config for {model}: {err}") from None
        self._check_types()
        validate(self, self._key_source)  # unknown keys (typos) and ranges, before any data is read

    # -- loading ---------------------------------------------------------------------------
    def _read_yaml(self, file):
        if not os.path.isfile(file):
            raise EtegrecError(f"config file '{file}' does not exist: check the --config_files path")
        try:
            with open(file, "r", encoding="utf-8") as f:
                loaded = yaml.load(f.read(), Loader=self.yaml_loader)
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise EtegrecError(f"config file '{file}' is not valid YAML{line}: fix the syntax") from None
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise EtegrecError(f"config file '{file}' must be a YAML mapping of `key: value` lines")
        return loaded

    def _note_source(self, values, where):
        """Where each key (and each key of a dict value, as ``outer.inner``) came from."""
        for key, value in values.items():
            self._key_source[key] = where
            if isinstance(value, dict):
                self._key_source.update({f"{key}.{sub}": where for sub in value})

    @staticmethod
    def _layer(base, values):
        """``values`` over ``base`` (a new dict): dict-valued keys merge, the rest replace."""
        merged = dict(base)
        for key, value in values.items():
            merged[key] = merge_setting(key, merged.get(key), value)
        return merged

    def _load_config_files(self, file_list):
        merged = {}
        for file in file_list or []:
            loaded = self._read_yaml(file)
            merged = self._layer(merged, loaded)
            self._note_source(loaded, f"config file '{file}'")
        return merged

    def _load_variable_config_dict(self, config_dict):
        values = super()._load_variable_config_dict(config_dict)
        self._note_source(values, "config_dict")
        return values

    def _load_cmd_line(self):
        cmd = {}
        for arg in self._cmd_args:
            key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
            if not key or not sep:
                raise EtegrecError(f"unrecognized argument '{arg}': config overrides look like --key=value")
            cmd[key] = value
        cmd = self._convert_config_dict(cmd)
        self._note_source(cmd, "the command line")
        return cmd

    def _merge_external_config_dict(self):
        merged = self._layer({}, self.file_config_dict)
        merged = self._layer(merged, self.variable_config_dict)
        self.external_config_dict = self._layer(merged, self.cmd_config_dict)

    def _get_model_and_dataset(self, model, dataset):
        if model is None and "model" not in self.external_config_dict:
            raise EtegrecError("no model given: pass --model NAME (e.g. --model ETEGRec)")
        if dataset is None and "dataset" not in self.external_config_dict:
            raise EtegrecError("no dataset given: pass --dataset NAME (e.g. --dataset ml-100k)")
        model = model if model is not None else self.external_config_dict["model"]
        model_class = get_model(model)
        dataset = dataset if dataset is not None else self.external_config_dict["dataset"]
        return model_class.__name__, model_class, dataset

    def _update_internal_config_dict(self, file):
        """One property file over the ones before it (RecBole's and the plugin's), dicts merged."""
        config_dict = self._read_yaml(file)
        self.internal_config_dict = self._layer(self.internal_config_dict, config_dict)
        return config_dict

    def _get_final_config_dict(self):
        return self._layer(self.internal_config_dict, self.external_config_dict)

    def _load_internal_config_dict(self, model, model_class, dataset):
        """Plugin layers; a dataset without ``properties/dataset/<dataset>.yaml`` gets the project's
        protocol (``properties/protocol.yaml``), then ``<data_path>/<dataset>/<dataset>.yaml`` (the
        dataset's own choices, written by ``prepare``) if present. Both are recorded in the config
        (``protocol_file``, ``dataset_config_file``), so the run's log names them."""
        super()._load_internal_config_dict(model, model_class, dataset)
        root = properties_dir()
        tokenizer = [os.path.join(root, "tokenizer.yaml")] if getattr(model_class, "uses_item_codes", False) else []
        protocol = os.path.join(root, "dataset", f"{dataset}.yaml")
        if not os.path.isfile(protocol):
            protocol = os.path.join(root, "protocol.yaml")
        for file in (
            os.path.join(root, "overall.yaml"),
            *tokenizer,
            os.path.join(root, "model", f"{model}.yaml"),
            protocol,
        ):
            if os.path.isfile(file):
                self._update_internal_config_dict(file)
        data_path = self.external_config_dict.get("data_path") or self.internal_config_dict.get("data_path") or ""
        own = os.path.join(str(data_path), str(dataset), f"{dataset}.yaml")
        own = own if os.path.isfile(own) else None
        if own:
            self._update_internal_config_dict(own)
        self.internal_config_dict.update(protocol_file=protocol, dataset_config_file=own)

    def _set_default_parameters(self):
        # topk, metrics, valid_metric, eval_args.mode, num_beams: before RecBole's own checks, which
        # raise TypeError/NotImplementedError tracebacks, or let a bad valid_metric fail after epoch 1.
        # Nested keys first: RecBole's eval_args handling drops unknown mode keys.
        check_nested(self.final_config_dict, self.model_class, self.dataset, self._key_source)
        check_evaluation(self.final_config_dict, self.model_class, self._key_source)
        super()._set_default_parameters()

    # -- devices ---------------------------------------------------------------------------
    def _init_device(self):
        """Under ``accelerate launch`` / ``torchrun`` (WORLD_SIZE > 1) the process group comes from
        ``distributed.init_process_group``; otherwise RecBole's device set-up."""
        if distributed.world_size_from_env() <= 1:
            return super()._init_device()
        distributed.init_process_group(self.final_config_dict)

    # -- validation ------------------------------------------------------------------------
    def _check_types(self):
        for key, value in self.external_config_dict.items():
            if key in _FLEXIBLE_KEYS or key not in self.internal_config_dict:
                continue
            default = self.internal_config_dict[key]
            if default is None or value is None and key not in _REQUIRED:
                continue
            if not _same_kind(default, value):
                raise EtegrecError(
                    f"config key '{key}' from {self._key_source.get(key, 'the user config')} expects "
                    f"{type(default).__name__} (default {default!r}) but got {value!r}: fix its value"
                )


_REQUIRED = {"epochs", "train_batch_size", "eval_batch_size", "learning_rate", "seed"}


def _same_kind(default, value):
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))
