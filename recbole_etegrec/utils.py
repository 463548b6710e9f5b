"""Plugin-first lookups (models, trainers, property files), in the style of RecBole-GNN."""
import importlib
import os
import sys
from contextlib import contextmanager

import torch

from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_etegrec.errors import EtegrecError

# model name -> module under recbole_etegrec.model (imported lazily: the LLaMA stack is heavy)
PLUGIN_MODELS = {"ETEGRec": "etegrec", "TIGER": "tiger"}


def get_model(model_name):
    """Return the model class: this plugin's models first, then RecBole's."""
    if not isinstance(model_name, str):
        return model_name
    if model_name in PLUGIN_MODELS:
        module = importlib.import_module(f"recbole_etegrec.model.{PLUGIN_MODELS[model_name]}")
        return getattr(module, model_name)
    try:
        return recbole_get_model(model_name)
    except (ValueError, AttributeError, ModuleNotFoundError) as err:
        # RecBole's lookup walks its exlib package last, which imports xgboost/lightgbm
        extra = f" ({err})" if isinstance(err, ModuleNotFoundError) else ""
        raise EtegrecError(
            f"unknown model '{model_name}'{extra}: use a plugin model ({', '.join(PLUGIN_MODELS)}) or a "
            "RecBole model name with RecBole's spelling (e.g. SASRec, GRU4Rec, BERT4Rec, Pop)"
        ) from None


def get_trainer(model_type, model_name):
    """Return ``<Model>Trainer`` from this plugin if it has one, else RecBole's choice."""
    trainers = importlib.import_module("recbole_etegrec.trainer")
    trainer = getattr(trainers, model_name + "Trainer", None)
    return trainer if trainer is not None else recbole_get_trainer(model_type, model_name)


def properties_dir():
    """The top-level ``properties/`` folder, for a source checkout and for an installed package."""
    candidates = [
        os.environ.get("RECBOLE_ETEGREC_PROPERTIES"),
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties"),
        os.path.join(sys.prefix, "share", "recbole_etegrec", "properties"),
    ]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "overall.yaml")):
            return path
    raise EtegrecError(
        "cannot find the plugin's properties/ folder (overall.yaml); reinstall with "
        "`pip install -e .` or set RECBOLE_ETEGREC_PROPERTIES to the folder"
    )


@contextmanager
def main_process_first():
    """Under DDP, let rank 0 run the block (e.g. build a cache) before the other ranks."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    if distributed and rank != 0:
        torch.distributed.barrier()
    yield
    if distributed and rank == 0:
        torch.distributed.barrier()
