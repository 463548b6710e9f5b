"""Plugin-first lookups by convention, in the style of RecBole-GNN: model ``X`` is the class ``X``
in ``recbole_etegrec.model.<x lower-case>``, its trainer ``XTrainer`` in
``recbole_etegrec.trainer.<x lower-case>_trainer``; anything else is RecBole's. Also where the
plugin's ``properties/`` folder is."""
import importlib
import os
import sys

from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_etegrec.errors import EtegrecError

MODEL_PACKAGE, TRAINER_PACKAGE = "recbole_etegrec.model", "recbole_etegrec.trainer"


def _plugin_attr(module_name: str, attr: str):
    """``attr`` of a plugin module, or None when there is no such module (imported lazily: heavy)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:  # the module exists but one of its imports is missing
            raise
        return None
    return getattr(module, attr, None)


def get_model(model_name) -> type:
    """Return the model class: this plugin's models first, then RecBole's."""
    if not isinstance(model_name, str):
        return model_name
    model = _plugin_attr(f"{MODEL_PACKAGE}.{model_name.lower()}", model_name)
    if isinstance(model, type):
        return model
    try:
        return recbole_get_model(model_name)
    except (ValueError, AttributeError, ModuleNotFoundError) as err:
        # RecBole's lookup walks its exlib package last, which imports xgboost/lightgbm
        extra = f" ({err})" if isinstance(err, ModuleNotFoundError) else ""
        raise EtegrecError(
            f"unknown model '{model_name}'{extra}: use a plugin model (ETEGRec, TIGER) or a RecBole model "
            "name with RecBole's spelling (e.g. SASRec, GRU4Rec, BERT4Rec, Pop)"
        ) from None


def get_trainer(model_type, model_name) -> type:
    """Return ``<Model>Trainer`` from this plugin if it has one, else RecBole's choice."""
    trainer = _plugin_attr(f"{TRAINER_PACKAGE}.{model_name.lower()}_trainer", model_name + "Trainer")
    return trainer if trainer is not None else recbole_get_trainer(model_type, model_name)


def properties_dir() -> str:
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
