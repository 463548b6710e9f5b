"""Lean checkpoints: with ``llama_path`` (a local Hugging Face base model) a checkpoint holds only
the parameters training can change; the frozen base weights are reloaded from ``llama_path``.

* ``frozen_keys(model)``: ``state_dict`` keys never trained: ``backbone.*`` names for which
  ``model._backbone_trainable(name)`` is False (with LoRA all but the ``lora_`` weights,
  ``embed_tokens`` always). Models without a backbone (TIGER) have none.
* ``lean_state_dict(model, config)`` / ``lean_metadata(config)``: what a trainer writes: the state
  without those keys, ``lean: True`` and ``base_model = {path, config_sha256}`` (the fingerprint of
  ``<llama_path>/config.json``). Without ``llama_path`` nothing changes (the full state, no flag).
* ``load_model_state(model, checkpoint, path, llama_path)``: the one loader every load site uses
  (resume, the trainer's best-checkpoint reload, ``inference.load_data_and_model``): full
  checkpoints load strictly as before; lean ones are checked against the base model the model
  was built from, loaded with ``strict=False``, and the missing keys must be exactly the frozen
  ones. Every mismatch is one ``EtegrecError`` line naming the checkpoint and the fix.
"""
import hashlib
import os
from typing import Optional

from recbole_etegrec.errors import EtegrecError

LEAN_FLAG = "lean"
BASE_KEY = "base_model"
_FIX = "load it with the config that wrote it"


def frozen_keys(model) -> set:
    """``state_dict`` keys of backbone weights that are never trained (they come from ``llama_path``)."""
    trainable = getattr(model, "_backbone_trainable", None)
    if trainable is None:
        return set()
    return {k for k in model.state_dict() if k.startswith("backbone.") and not trainable(k)}


def is_lean_config(config) -> bool:
    return bool(config["llama_path"])


def base_fingerprint(path) -> Optional[str]:
    """sha256 (hex) of ``<path>/config.json``'s bytes; None when the file is missing."""
    file = os.path.join(str(path), "config.json")
    if not os.path.isfile(file):
        return None
    with open(file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def lean_metadata(config) -> dict:
    """Extra checkpoint entries: ``{}`` without ``llama_path``, else the flag and the fingerprint."""
    if not is_lean_config(config):
        return {}
    path = str(config["llama_path"])
    return {LEAN_FLAG: True, BASE_KEY: {"path": path, "config_sha256": base_fingerprint(path)}}


def lean_state_dict(model, config) -> dict:
    """``model.state_dict()`` without the frozen base weights when ``llama_path`` is set."""
    state = model.state_dict()
    if not is_lean_config(config):
        return state
    frozen = frozen_keys(model)
    return {k: v for k, v in state.items() if k not in frozen}


def check_base_model(checkpoint, path, llama_path, label=None) -> None:
    """A lean checkpoint must be loaded over the base model it was trained on."""
    if not checkpoint.get(LEAN_FLAG):
        return
    label = label or f"checkpoint '{path}'"
    base = checkpoint.get(BASE_KEY) or {}
    recorded, sha = base.get("path"), base.get("config_sha256")
    fix = (f"set llama_path to the unchanged base model folder it was trained from ({recorded}); a lean "
           "checkpoint holds only the trained weights")
    if not llama_path:
        raise EtegrecError(f"{label} is lean (trained on the base model {recorded}) but this config has no "
                           f"llama_path: {fix}")
    current = base_fingerprint(llama_path)
    if current is None:
        file = os.path.join(str(llama_path), "config.json")
        raise EtegrecError(f"{label} needs its base model {recorded}, but {file} does not exist: {fix}")
    if current != sha:
        raise EtegrecError(f"{label} was trained on the base model {recorded} (config.json sha256 {str(sha)[:12]}), "
                           f"but {os.path.join(str(llama_path), 'config.json')} differs (sha256 {current[:12]}): {fix}")


def first_error_line(err) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__)[:160]


def _names(keys, limit=3):
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_model_state(model, checkpoint, path, llama_path=None, label=None, fix=_FIX) -> None:
    """Load ``checkpoint['state_dict']`` into ``model``. Full checkpoints: ``load_state_dict`` as
    before (its RuntimeError is the caller's to word). Lean ones: fingerprint check, then
    ``strict=False`` and exactly the frozen keys missing, else one "does not fit" line."""
    state = checkpoint["state_dict"]
    if not checkpoint.get(LEAN_FLAG):
        model.load_state_dict(state)
        return
    label = label or f"checkpoint '{path}'"
    check_base_model(checkpoint, path, llama_path, label)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches raise even with strict=False
        first = first_error_line(err)
        raise EtegrecError(f"{label} does not fit this model's size/settings ({first}): {fix}") from None
    frozen = frozen_keys(model)
    missing = set(result.missing_keys) - frozen
    unexpected = set(result.unexpected_keys)
    stored_frozen = frozen & set(state)  # trained in the checkpoint, frozen here (e.g. lora differs)
    problems = []
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    if stored_frozen:
        problems.append(f"frozen here but stored {_names(stored_frozen)}")
    if problems:
        raise EtegrecError(f"{label} does not fit this model's size/settings ({'; '.join(problems)}): {fix}")
