"""Use a trained checkpoint: the plugin's ``load_data_and_model``, mirroring RecBole's.

RecBole's own ``recbole.quick_start.load_data_and_model`` cannot load this plugin's models: it
looks models up in RecBole only, builds plain loaders (ETEGRec/TIGER read code sequences), and
its model constructor would go through the tokenizer cache, pretraining an RQ-VAE (and, for
``item_emb_source: sasrec``, a SASRec) when the cache is missing. This version

* rebuilds data and loaders with the plugin's ``create_dataset`` / ``data_preparation`` from the
  checkpoint's pickled ``Config`` (so ``debug`` subsets and the split are the training run's);
* never trains anything: when the tokenizer cache named by the checkpoint's config is missing,
  the model is built from a tokenizer reconstructed out of the checkpoint itself (the RQ-VAE
  weights are in ``state_dict``, the code table in ``other_parameter``);
* loads ``state_dict`` and ``other_parameter`` and pushes the code table to the loaders;
* makes ``recbole.utils.case_study.full_sort_topk(uid_series, model, test_data, k)`` work:
  that function feeds ``test_data.dataset[index]`` straight to ``model.full_sort_predict``,
  bypassing the loaders' transform, so the model gets a ``full_sort_predict`` that adds the
  code fields (``add_code_fields``) when they are missing.
"""
import os
import tempfile
from contextlib import contextmanager
from logging import getLogger

import torch
from recbole.utils import init_seed

from recbole_etegrec import compat
from recbole_etegrec.data.dataloader import add_code_fields
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.quick_start import load_data
from recbole_etegrec.utils import get_model

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


def load_data_and_model(model_file: str, state: str = None):
    """``(config, model, dataset, train_data, valid_data, test_data)`` as RecBole's function
    returns them; the model is in eval mode on ``config['device']`` (the CPU when the checkpoint
    was trained on a GPU this machine lacks). ``state`` overrides the log level (e.g. "warning")."""
    checkpoint = load_checkpoint(model_file)
    config = checkpoint["config"]
    if config["device"].type == "cuda" and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    if state is not None:
        config["state"] = state
    dataset, train_data, valid_data, test_data = load_data(config)

    init_seed(config["seed"], config["reproducibility"])
    model_class = get_model(config["model"])
    codes = getattr(model_class, "uses_item_codes", False)
    with _tokenizer_from_checkpoint(config, checkpoint, train_data._dataset, enabled=codes):
        model = model_class(config, train_data._dataset)
    model = model.to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    model.eval()
    if codes:
        for loader in (train_data, valid_data, test_data):  # one shared slot; set all for clarity
            loader.set_code_table(model.code_table.codes)
        enable_case_study(model, config)
    getLogger().info(f"loaded {config['model']} from {model_file}")
    return config, model, dataset, train_data, valid_data, test_data


def with_code_fields(interaction, model, config):
    """``interaction`` (``item_id_list``, ``item_length``, ``item_id``) plus the code-sequence
    fields, built from the model's own code table exactly as the code-sequence loaders do."""
    item = config["ITEM_ID_FIELD"]
    device = interaction[item].device
    return add_code_fields(interaction.to("cpu"), model.code_table.codes, item,
                           item + config["LIST_SUFFIX"], config["ITEM_LIST_LENGTH_FIELD"]).to(device)


def enable_case_study(model, config) -> None:
    """Let ``model.full_sort_predict`` accept rows read straight from a dataset (no code fields),
    as ``recbole.utils.case_study.full_sort_scores`` passes them; batches from the loaders,
    which already carry the fields, go through unchanged."""
    if getattr(model, "_case_study_enabled", False):
        return
    original = model.full_sort_predict

    def full_sort_predict(interaction):
        if "code_input" not in interaction:
            interaction = with_code_fields(interaction, model, config)
        return original(interaction)

    model.full_sort_predict = full_sort_predict
    model._case_study_enabled = True


# -- tokenizer without retraining ---------------------------------------------------------------
@contextmanager
def _tokenizer_from_checkpoint(config, checkpoint, dataset, enabled=True):
    """While the model is constructed, point ``tokenizer_path`` at a tokenizer rebuilt from the
    checkpoint if the one the config names (``tokenizer_path`` or the cache) is missing; the
    constructor would otherwise pretrain a new one. Its weights and code table are replaced by
    the checkpoint's right after construction anyway."""
    if not enabled or os.path.isfile(_tokenizer_source(config)):
        yield
        return
    path = config["tokenizer_path"]
    with tempfile.TemporaryDirectory(prefix="etegrec-tokenizer-") as folder:
        rebuilt = os.path.join(folder, "from_checkpoint.pth")
        _save_tokenizer_from_checkpoint(rebuilt, config, checkpoint, dataset)
        getLogger().warning(
            f"tokenizer {_tokenizer_source(config)} not found: using the tokenizer stored in "
            "the checkpoint (item embeddings are not in it, so this model can recommend but not train further)")
        config["tokenizer_path"] = rebuilt
        try:
            yield
        finally:
            config["tokenizer_path"] = path


def _save_tokenizer_from_checkpoint(path, config, checkpoint, dataset):
    from recbole_etegrec.tokenizer import CodeTable, RQVAE, save_tokenizer
    from recbole_etegrec.tokenizer.embeddings import item_tokens

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
             "utilization": [len(torch.unique(table.codes[1:, lv])) / table.code_num for lv in range(levels)]}
    save_tokenizer(path, rqvae, table, stats, None, torch.zeros(dataset.item_num, in_dim), item_tokens(dataset))


def _tokenizer_source(config):
    """The tokenizer file a model constructor would load: ``tokenizer_path`` or the cache."""
    from recbole_etegrec.tokenizer import tokenizer_cache_path

    return config["tokenizer_path"] or tokenizer_cache_path(config)
