"""Use a trained checkpoint: the plugin's ``load_data_and_model``, mirroring RecBole's.

RecBole's own ``recbole.quick_start.load_data_and_model`` cannot load this plugin's models: it
looks models up in RecBole only, builds plain loaders (ETEGRec/TIGER read code sequences), and
the code models need the item tokenizer stage, which pretrains an RQ-VAE (and, for
``item_emb_source: sasrec``, a SASRec) when its cache is missing. This version

* rebuilds data and loaders with the plugin's ``create_dataset`` / ``data_preparation`` from the
  checkpoint's pickled ``Config`` (so ``debug`` subsets and the split are the training run's);
* never trains anything: when the tokenizer cache named by the checkpoint's config is missing,
  the model is built from a tokenizer reconstructed out of the checkpoint itself (the RQ-VAE
  weights are in ``state_dict``, the code table in ``other_parameter``);
* loads ``state_dict`` and ``other_parameter`` and pushes the code table to the loaders (a lean
  checkpoint, written with ``llama_path``, gets its frozen base weights from ``llama_path``, whose
  ``config.json`` must match the fingerprint the checkpoint records);
* ``recbole.utils.case_study.full_sort_topk(uid_series, model, test_data, k)`` then works: it
  feeds ``test_data.dataset[index]`` straight to ``model.full_sort_predict``, and the code models
  add the code fields themselves when a batch lacks them (``CodeSequenceMixin.with_code_fields``).
"""
import os
from logging import getLogger
from typing import TYPE_CHECKING, Tuple

import torch
from recbole.utils import init_seed

from recbole_etegrec import compat
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.quick_start import load_split
from recbole_etegrec.registry import get_model
from recbole_etegrec.stages.item_tokenizer import attach_item_tokenizer, prepare_item_tokenizer
from recbole_etegrec.trainer.lean import check_base_model, first_error_line, load_model_state

if TYPE_CHECKING:
    from recbole.data.dataloader import AbstractDataLoader
    from recbole.data.dataset import Dataset
    from recbole.model.abstract_recommender import AbstractRecommender

    from recbole_etegrec.config import Config

_FIX_CHECKPOINT = "pass a file a training run wrote (saved/<Model>-<time>.pth)"


def load_checkpoint(model_file: str) -> dict:
    """The checkpoint dict (``config``, ``state_dict``, ``other_parameter``), on the CPU.

    It is unpickled with ``weights_only=False`` because RecBole checkpoints pickle the whole
    Config: only load checkpoints you (or a trainer you trust) wrote."""
    if not os.path.isfile(model_file):
        raise EtegrecError(f"checkpoint '{model_file}' does not exist: {_FIX_CHECKPOINT}")
    compat.apply()
    try:
        checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user problem
        raise EtegrecError(f"checkpoint '{model_file}' cannot be read ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}): {_FIX_CHECKPOINT}") from None
    missing = [k for k in ("config", "state_dict") if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise EtegrecError(f"'{model_file}' is not a RecBole model checkpoint (no {', '.join(missing)}): "
                           f"{_FIX_CHECKPOINT}")
    return checkpoint


def load_data_and_model(model_file: str, state: str = None) -> Tuple[
    "Config", "AbstractRecommender", "Dataset", "AbstractDataLoader", "AbstractDataLoader", "AbstractDataLoader"
]:
    """``(config, model, dataset, train_data, valid_data, test_data)`` as RecBole's function
    returns them; the model is in eval mode on ``config['device']`` (the CPU when the checkpoint
    was trained on a GPU this machine lacks). ``state`` overrides the log level (e.g. "warning")."""
    checkpoint = load_checkpoint(model_file)
    config = checkpoint["config"]
    if config["device"].type == "cuda" and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    if state is not None:
        config["state"] = state
    check_base_model(checkpoint, model_file, config["llama_path"])  # lean: fail before reading any data
    # the checkpoint's user/item ids, whatever the line order of today's .inter (data/identity.py)
    dataset, train_data, valid_data, test_data = load_split(config, checkpoint.get("data"),
                                                            f"checkpoint '{model_file}'")
    model_class = get_model(config["model"])
    codes = getattr(model_class, "uses_item_codes", False)
    if codes:
        _item_tokenizer_without_training(config, checkpoint, train_data._dataset)

    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data._dataset)
    model = model.to(config["device"])
    try:  # lean checkpoints: the frozen base weights come from llama_path (trainer/lean.py)
        load_model_state(model, checkpoint, model_file, config["llama_path"], fix=_FIX_CHECKPOINT)
    except RuntimeError as err:
        raise EtegrecError(f"checkpoint '{model_file}' does not fit this model's size/settings "
                           f"({first_error_line(err)}): {_FIX_CHECKPOINT}") from None
    model.load_other_parameter(checkpoint.get("other_parameter"))
    model.eval()
    if codes:
        for loader in (train_data, valid_data, test_data):  # one shared slot; set all for clarity
            loader.set_code_table(model.code_table.codes)
    getLogger().info(f"loaded {config['model']} from {model_file}")
    return config, model, dataset, train_data, valid_data, test_data


# -- tokenizer without retraining ---------------------------------------------------------------
def _item_tokenizer_without_training(config, checkpoint, dataset) -> None:
    """The item tokenizer stage, except that it never trains: the cached tokenizer the config names
    (``tokenizer_path`` or the cache) when it exists, else one rebuilt from the checkpoint itself.
    Either way its weights and code table are replaced by the checkpoint's once the model is built."""
    if os.path.isfile(_tokenizer_source(config)):
        prepare_item_tokenizer(config, dataset)
        return
    getLogger().warning(
        f"tokenizer {_tokenizer_source(config)} not found: using the tokenizer stored in "
        "the checkpoint (item embeddings are not in it, so this model can recommend but not train further)")
    attach_item_tokenizer(dataset, _bundle_from_checkpoint(config, checkpoint, dataset))


def _bundle_from_checkpoint(config, checkpoint, dataset):
    from recbole_etegrec.stages.item_embeddings import item_tokens
    from recbole_etegrec.tokenizer import RQVAE, CodeTable, TokenizerBundle

    other = checkpoint.get("other_parameter") or {}
    if "code_table" not in other:
        raise EtegrecError(f"the checkpoint holds no code table (other_parameter) and the tokenizer cache "
                           f"{_tokenizer_source(config)} is missing: use a checkpoint written by this "
                           "plugin's trainer, or restore the tokenizer cache")
    table = CodeTable.from_state_dict(other["code_table"])
    prefix = "tokenizer."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    in_dim = int(weights["encoder.0.weight"].shape[1]) if weights else 1  # TIGER keeps no RQ-VAE
    rqvae = RQVAE.from_config(config, in_dim)
    if weights:
        rqvae.load_state_dict(weights)
    levels = table.code_length - 1
    stats = {"collision_rate": table.collision_rate(), "max_suffix": table.max_suffix,
             "utilization": [len(torch.unique(table.codes[1:, lv])) / table.code_num for lv in range(levels)],
             "item_tokens": item_tokens(dataset)}
    return TokenizerBundle(rqvae.eval(), table, None, stats, torch.zeros(dataset.item_num, in_dim))


def _tokenizer_source(config):
    """The tokenizer file the item tokenizer stage would load: ``tokenizer_path`` or the cache."""
    from recbole_etegrec.stages.item_tokenizer import tokenizer_cache_path

    return config["tokenizer_path"] or tokenizer_cache_path(config)
