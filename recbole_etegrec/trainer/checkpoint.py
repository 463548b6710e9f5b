"""``ResumableTrainerMixin``: crash-safe checkpoints, exact resume and a divergence stop for every
trainer the pipeline builds (RecBole's, TIGER's, ETEGRec's).

* Every checkpoint is written atomically (``io.atomic_torch_save``): a kill leaves the old file.
* Beside RecBole's ``best`` checkpoint (``<Model>-<time>-<run id>.pth``, written when validation
  improves; the run id keeps runs started in one second apart) a ``last`` checkpoint
  (``<...>-last.pth``) is written after every epoch. It holds the
  model, code table, every optimizer and scheduler, the epoch, the early-stopping state and the
  RNG states (python, numpy, torch, the train loader's shuffle generator), so
  ``--resume_file=<...>-last.pth`` continues exactly where the uninterrupted run would be.
  It is written at the start of the next epoch (the state there equals "after epoch e") and when
  ``fit`` returns. A resumed run keeps writing the files it resumed from when they are in its
  ``checkpoint_dir``, and otherwise writes copies of them there (never into another folder); its
  settings must equal the checkpoint's except ``RESUME_FREE_KEYS`` (``resume_changes``).
* With ``llama_path`` both are lean (``trainer/lean.py``): the frozen base weights are left out and
  reloaded from ``llama_path``, whose ``config.json`` fingerprint the checkpoint records.
* A NaN/inf batch loss, or one above ``LOSS_EXPLOSION`` x the first loss of its phase, stops the
  run with one line naming the learning rate; the best checkpoint so far stays on disk.
"""
import math
import os
import shutil
from typing import List, Optional, Tuple

import torch
from recbole.utils import set_color

from recbole_etegrec import distributed
from recbole_etegrec.config import RESUME_FREE_KEYS
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import atomic_path, atomic_torch_save, check_file_writable, new_run_id, remove_stale_tmp
from recbole_etegrec.rng import get_rng_state, set_rng_state
from recbole_etegrec.trainer.lean import first_error_line, lean_metadata, lean_state_dict, load_model_state

LOSS_EXPLOSION = 100.0
_KIND = "recbole_etegrec-checkpoint"


def last_checkpoint_path(best_path) -> str:
    root, ext = os.path.splitext(best_path)
    return f"{root}-last{ext or '.pth'}"


class TrainingDiverged(EtegrecError):
    """The loss became NaN/inf or exploded: the learning rate is the usual fix."""


class ResumableTrainerMixin:
    """Put first in the bases: ``class XTrainer(ResumableTrainerMixin, ..., Trainer)``."""

    lr_keys = ("learning_rate",)  # named in the divergence message

    def __init__(self, config, model):
        super().__init__(config, model)
        # RecBole names it <Model>-<second>.pth: runs started in one second would share the file.
        # Every rank names it from its own clock and id: take rank 0's, the file it writes.
        root, ext = os.path.splitext(self.saved_model_file)
        run_id = getattr(config, "run_id", None) or new_run_id()
        self.saved_model_file = distributed.broadcast_from_rank0(f"{root}-{run_id}{ext}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False) -> Optional[dict]:
        if load_best_model and eval_data:
            distributed.barrier()  # under DDP rank 0 may still be writing the best checkpoint
        return super().evaluate(eval_data, load_best_model=load_best_model, model_file=model_file,
                                show_progress=show_progress)

    # -- state -----------------------------------------------------------------------------
    def optimizer_states(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_optimizer_states(self, checkpoint) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])

    def loss_phase(self) -> str:
        """Losses of different phases (ETEGRec's tokenizer/recommender epochs) differ in scale."""
        return "train"

    def _state(self, epoch):
        return {
            "kind": _KIND, "model": self.config["model"], "config": self.config, "epoch": epoch,
            "cur_step": self.cur_step, "best_valid_score": self.best_valid_score,
            "state_dict": lean_state_dict(self.model, self.config), "other_parameter": self.model.other_parameter(),
            **lean_metadata(self.config), **self.optimizer_states(),
            "data": getattr(self, "data_identity", None),  # token maps + digest (data/identity.py)
        }

    def _is_writer(self):
        return distributed.is_writer(self.config)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self._is_writer():
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        atomic_torch_save(self._state(epoch), path, pickle_protocol=4)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    def save_last(self, epoch, train_data=None, finished=False) -> None:
        if not self._is_writer() or not getattr(self, "_saved", True):
            return
        state = self._state(epoch)
        generator = getattr(train_data, "generator", None)
        state.update(
            last=True, finished=finished, best_file=self.saved_model_file,
            best_valid_result=self.best_valid_result, train_loss_dict=dict(self.train_loss_dict),
            loss_reference=dict(self._loss_reference()), rng=get_rng_state(),
            valid_history=list(getattr(self, "valid_history", [])),
            loader_rng=generator.get_state() if isinstance(generator, torch.Generator) else None,
        )
        path = self.last_file or last_checkpoint_path(self.saved_model_file)
        atomic_torch_save(state, path, pickle_protocol=4)
        self.last_file = path
        self.logger.info(set_color("Saving last", "blue") + f": {path} (epoch {epoch})")

    # -- fit loop hooks ----------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None) -> Tuple[float, Optional[dict]]:
        self._saved = saved
        remove_stale_tmp(self.checkpoint_dir)
        if not hasattr(self, "last_file"):
            self.last_file = None
        self._epoch_started = None
        first_epoch = self.start_epoch
        result = self.fit_stages(train_data, valid_data, verbose=verbose, saved=saved,
                                 show_progress=show_progress, callback_fn=callback_fn)
        done = self.last_epoch_done()
        if done >= first_epoch:
            self.save_last(done, train_data, finished=True)
        return result

    def run_epoch(self, train_data, epoch_idx, steps_per_epoch=None, show_progress=False) -> object:
        """Exactly one training epoch, index ``epoch_idx``, as ``fit`` runs it in a run that has
        reached it: no stage logic, no validation, no checkpoint file (measurement scripts, tests).
        ``steps_per_epoch``: the schedules' horizon (default: the loader's length)."""
        self._saved, self.last_file, self._epoch_started = False, None, None
        self.start_epoch = epoch_idx
        self.build_schedules(steps_per_epoch or len(train_data))
        return self._train_epoch(train_data, epoch_idx, show_progress=show_progress)

    def build_schedules(self, steps_per_epoch) -> None:
        """The per-step LR schedules ``fit`` builds before its first epoch (RecBole's trainers: none)."""

    def fit_stages(self, train_data, valid_data=None, **kwargs) -> Tuple[float, Optional[dict]]:
        """One RecBole ``fit``; a trainer with several stages (ETEGRec's finetune) overrides this
        and calls it once per stage."""
        return super().fit(train_data, valid_data, **kwargs)

    def last_epoch_done(self) -> int:
        return max(self.train_loss_dict) if self.train_loss_dict else self.start_epoch - 1

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        # per-epoch validation history: the benchmark plots it and reports the stopping epoch
        self.valid_history = [*getattr(self, "valid_history", []), (getattr(self, "_epoch_idx", 0), float(score))]
        return score, result

    def epoch_start(self, train_data, epoch_idx) -> None:
        """Once per epoch, before anything else touches the model or the random state."""
        if self._epoch_started == epoch_idx:
            return
        self._epoch_started = epoch_idx
        pending = getattr(self, "_pending_rng", None)
        if pending is not None:  # resumed: continue the interrupted run's random stream
            set_rng_state(pending["rng"])
            generator = getattr(train_data, "generator", None)
            if pending["loader_rng"] is not None and isinstance(generator, torch.Generator):
                generator.set_state(pending["loader_rng"])
            self._pending_rng = None
        elif epoch_idx > self.start_epoch:
            self.save_last(epoch_idx - 1, train_data)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.epoch_start(train_data, epoch_idx)
        self._epoch_idx = epoch_idx
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def _loss_reference(self):
        if not hasattr(self, "_loss_ref"):
            self._loss_ref = {}
        return self._loss_ref

    def _check_nan(self, loss):
        value = float(loss.detach())
        lr = ", ".join(f"{k}={self.config[k]}" for k in self.lr_keys if self.config[k] is not None)
        epoch = getattr(self, "_epoch_idx", "?")
        if not math.isfinite(value):
            raise TrainingDiverged(f"training loss is {value} in epoch {epoch} ({lr}): lower the learning "
                                   "rate; the best checkpoint so far is kept")
        reference = self._loss_reference().setdefault(self.loss_phase(), abs(value))
        if reference > 0 and abs(value) > LOSS_EXPLOSION * reference:
            raise TrainingDiverged(
                f"training loss exploded to {value:.4g} in epoch {epoch}, {abs(value) / reference:.0f}x its first "
                f"value {reference:.4g} ({lr}): lower the learning rate; the best checkpoint so far is kept")

    # -- resume ------------------------------------------------------------------------------
    def resume_checkpoint(self, resume_file, checkpoint=None) -> None:
        """Continue from ``resume_file``; ``checkpoint``: its contents when the caller already read
        them (``quick_start.run`` checks its config and data first), so the file is read once."""
        resume_file = str(resume_file)
        if checkpoint is None:
            checkpoint = read_checkpoint(resume_file, self.device)
        check_checkpoint_model(checkpoint, self.config["model"], resume_file)
        try:
            load_model_state(self.model, checkpoint, resume_file, self.config["llama_path"],
                             label=f"resume_file '{resume_file}'", fix="resume with the config that wrote it")
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.load_optimizer_states(checkpoint)
        except (RuntimeError, KeyError, ValueError) as err:
            raise EtegrecError(f"resume_file '{resume_file}' does not fit this model's size/settings "
                               f"({first_error_line(err)}): "
                               "resume with the config that wrote it") from None
        self.start_epoch, self.cur_step = checkpoint["epoch"] + 1, checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint.get("last"):
            best = checkpoint.get("best_file")
            if best and os.path.isfile(best):
                self.saved_model_file = self._own_copy(best)  # keep evaluating the run's best checkpoint
            self.last_file = self._own_copy(resume_file, copy=False)  # replaced atomically after each epoch
            self.best_valid_result = checkpoint.get("best_valid_result")
            self.train_loss_dict = dict(checkpoint.get("train_loss_dict") or {})
            self._loss_ref = dict(checkpoint.get("loss_reference") or {})
            self.valid_history = [tuple(v) for v in checkpoint.get("valid_history") or []]
            self._pending_rng = {"rng": checkpoint["rng"], "loader_rng": checkpoint.get("loader_rng")}
        else:  # a best checkpoint (no RNG state): training continues after its epoch
            self.saved_model_file = self._own_copy(resume_file)
        if self._is_writer():  # before any epoch: a read-only file or folder stops here, not after one
            for path in (self.saved_model_file, self.last_file or last_checkpoint_path(self.saved_model_file)):
                check_file_writable(path, "resume_file" if path == resume_file else "checkpoint_dir")
        self.logger.info(f"Resumed from {resume_file}; training continues at epoch {self.start_epoch}, "
                         f"writing {self.saved_model_file}")

    def _own_copy(self, path, copy=True) -> str:
        """``path`` itself when it lies in this run's ``checkpoint_dir`` (the same run continuing),
        else the same name in ``checkpoint_dir``, copied there (``copy``) so that the best
        checkpoint is there even if no later epoch improves on it."""
        target = os.path.join(self.checkpoint_dir, os.path.basename(path))
        if os.path.realpath(os.path.dirname(path)) == os.path.realpath(self.checkpoint_dir):
            return path
        if copy and self._is_writer() and os.path.realpath(path) != os.path.realpath(target):
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
        return target


def check_checkpoint_model(checkpoint, model, path) -> None:
    if checkpoint.get("model") != model and \
            str(getattr(checkpoint.get("config"), "final_config_dict", {}).get("model")) != model:
        found = checkpoint.get("model") or "another model"
        raise EtegrecError(f"resume_file '{path}' is a {found} checkpoint, not {model}: give a checkpoint this "
                           "model wrote")


def resume_changes(saved_config, config) -> List[str]:
    """``key: saved -> now`` for every setting that differs between a checkpoint's config and this
    run's, apart from ``RESUME_FREE_KEYS`` (output, logging, devices, epochs and stopping)."""
    saved = dict(getattr(saved_config, "final_config_dict", None) or {})
    now = config.final_config_dict
    absent = object()
    changes = []
    for key in sorted(set(saved) | set(now), key=str):
        if key in RESUME_FREE_KEYS or str(key).startswith("_"):
            continue
        old, new = saved.get(key, absent), now.get(key, absent)
        try:
            same = bool(old == new)  # dicts equal whatever their key order
        except (TypeError, ValueError):  # arrays and the like
            same = repr(old) == repr(new)
        if not same:
            old, new = ("(absent)" if v is absent else repr(v) for v in (old, new))
            changes.append(f"{key}: {old} -> {new}")
    return changes


def check_resume_config(checkpoint, config) -> List[str]:
    """One error line listing what changed since the checkpoint was written, before any data is
    read; with ``resume_allow_change`` the changes are returned instead (the caller logs them)."""
    check_checkpoint_model(checkpoint, config["model"], config["resume_file"])
    changes = resume_changes(checkpoint.get("config"), config)
    if changes and not config["resume_allow_change"]:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise EtegrecError(f"resume_file '{config['resume_file']}' was trained with other settings "
                           f"({shown}): resume with the settings that wrote it (only epochs, "
                           "stopping, eval steps and output settings may change), or pass --resume_allow_change=True")
    return changes


def read_checkpoint(path, device="cpu") -> dict:
    """A checkpoint a trainer wrote, or one clear error (missing, truncated, not a checkpoint)."""
    if not os.path.isfile(path):
        raise EtegrecError(f"checkpoint '{path}' does not exist: give a file this model's trainer wrote "
                           "(saved/<Model>-<time>.pth or its -last.pth)")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001 - truncated, random bytes, foreign pickle: one user problem
        raise EtegrecError(f"checkpoint '{path}' cannot be read ({type(err).__name__}): it is truncated or "
                           "not a checkpoint; use the previous one (-last.pth or the best .pth)") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise EtegrecError(f"'{path}' is not a model checkpoint (no state_dict): give a file this model's "
                           "trainer wrote")
    return checkpoint
