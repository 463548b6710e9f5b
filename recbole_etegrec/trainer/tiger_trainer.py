"""TIGERTrainer: RecBole's Trainer with AdamW, a per-step LR schedule, and the code table pushed
to the code-sequence loaders.

``CodeTableTrainerMixin`` is the shared part for any model with a ``code_table`` attribute
(TIGER, ETEGRec): before every training epoch and every evaluation, the model's current code
table goes to the loaders (they share one slot, so train/valid/test follow). In ``evaluate``
the best checkpoint is reloaded first (model weights + ``other_parameter``, where the code table
lives), so the loaders always tokenize with the table of the weights being evaluated.

LR schedules (``lr_scheduler``), stepped after every optimizer step:
  constant      ``learning_rate`` throughout
  inverse_sqrt  TIGER's: ``learning_rate`` for ``warmup_steps`` steps, then * sqrt(warmup_steps / step)
  cosine        linear warm-up over ``warmup_steps``, then cosine decay to 0 at the last epoch
"""
import math

import torch
from recbole.trainer import Trainer
from torch.optim.lr_scheduler import LambdaLR

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.trainer.optim import build_adamw

SCHEDULES = ("constant", "inverse_sqrt", "cosine")


class CodeTableTrainerMixin:
    """Put before ``Trainer`` in the bases: ``class XTrainer(CodeTableTrainerMixin, Trainer)``."""

    def push_code_table(self, loader):
        if loader is not None and hasattr(loader, "set_code_table"):
            loader.set_code_table(self.model.code_table.codes)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.push_code_table(train_data)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            self._load_checkpoint(model_file or self.saved_model_file)
        self.push_code_table(eval_data)
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _load_checkpoint(self, path):
        """Model weights and ``other_parameter`` (the code table) from a checkpoint this trainer wrote."""
        checkpoint = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading model structure and parameters from {path}")
        return checkpoint


def lr_factor(kind, warmup_steps, total_steps):
    """Multiplier of ``learning_rate`` after ``step`` optimizer steps."""
    if kind not in SCHEDULES:
        raise EtegrecError(f"config key 'lr_scheduler' must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    warmup = max(int(warmup_steps), 0)

    def factor(step):
        if kind == "constant":
            return 1.0
        if kind == "inverse_sqrt":
            return 1.0 if step < max(warmup, 1) else math.sqrt(max(warmup, 1) / step)
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class TIGERTrainer(CodeTableTrainerMixin, Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.scheduler, self._schedule_hook = None, None

    def _build_optimizer(self, **kwargs):
        return build_adamw(self.model.parameters(), self.config["learning_rate"],
                           self.config["weight_decay"], self.config["optimizer"])

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self._build_scheduler(len(train_data))
        return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                           show_progress=show_progress, callback_fn=callback_fn)

    def _build_scheduler(self, steps_per_epoch):
        """A LambdaLR stepped by an optimizer post-step hook (RecBole's loop has no scheduler call).
        A resumed run continues the schedule from ``start_epoch * steps_per_epoch``."""
        if self._schedule_hook is not None:
            self._schedule_hook.remove()
        factor = lr_factor(self.config["lr_scheduler"], self.config["warmup_steps"],
                           self.epochs * steps_per_epoch)
        offset = self.start_epoch * steps_per_epoch
        self.scheduler = LambdaLR(self.optimizer, lambda step: factor(step + offset))
        self._schedule_hook = self.optimizer.register_step_post_hook(lambda *_: self.scheduler.step())
