"""TIGERTrainer: RecBole's Trainer with AdamW, a per-step LR schedule, and the code table pushed
to the code-sequence loaders.

LR schedules (``lr_scheduler``), stepped after every optimizer step:
  constant      ``learning_rate`` throughout
  inverse_sqrt  TIGER's: ``learning_rate`` for ``warmup_steps`` steps, then * sqrt(warmup_steps / step)
  cosine        linear warm-up over ``warmup_steps``, then cosine decay to 0 at the last epoch
"""
import math
from typing import Callable, Optional, Tuple

from recbole.trainer import Trainer
from torch.optim.lr_scheduler import LambdaLR

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.trainer.checkpoint import ResumableTrainerMixin
from recbole_etegrec.trainer.code_table_sync import CodeTableTrainerMixin
from recbole_etegrec.trainer.optim import build_adamw

SCHEDULES = ("constant", "inverse_sqrt", "cosine")


def lr_factor(kind, warmup_steps, total_steps) -> Callable[[int], float]:
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


class TIGERTrainer(ResumableTrainerMixin, CodeTableTrainerMixin, Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.scheduler, self._schedule_hook = None, None

    def _build_optimizer(self, **kwargs):
        return build_adamw(self.model.parameters(), self.config["learning_rate"],
                           self.config["weight_decay"], self.config["optimizer"])

    def optimizer_states(self) -> dict:
        # the schedule is a function of the step (rebuilt with the resumed offset); saved to inspect
        scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
        return {"optimizer": self.optimizer.state_dict(), "scheduler": scheduler}

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None) -> Tuple[float, Optional[dict]]:
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
