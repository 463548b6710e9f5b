"""Plugin trainers, found by ``get_trainer`` as ``<Model>Trainer`` (imported lazily)."""
import importlib

_TRAINERS = {"ETEGRecTrainer": "etegrec_trainer", "TIGERTrainer": "tiger_trainer"}


def __getattr__(name):
    if name in _TRAINERS:
        return getattr(importlib.import_module(f"recbole_etegrec.trainer.{_TRAINERS[name]}"), name)
    raise AttributeError(name)
