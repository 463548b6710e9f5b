"""TIGERTrainer: RecBole's Trainer with AdamW, a per-step LR schedule (``lr_scheduler``:
constant, inverse_sqrt or cosine, ``trainer/optim.lr_factor``; cosine reaches 0 at the last
epoch), and the code table pushed to the code-sequence loaders.
"""
from typing import Optional, Tuple

from recbole.trainer import Trainer

from recbole_etegrec.trainer.checkpoint import ResumableTrainerMixin
from recbole_etegrec.trainer.code_table_sync import CodeTableTrainerMixin
from recbole_etegrec.trainer.optim import StepSchedule, build_adamw, lr_factor, warmup_steps_of


class TIGERTrainer(ResumableTrainerMixin, CodeTableTrainerMixin, Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.scheduler = None

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

    def build_schedules(self, steps_per_epoch) -> None:
        self._build_scheduler(steps_per_epoch)

    def _build_scheduler(self, steps_per_epoch):
        """A resumed run continues the schedule from ``start_epoch * steps_per_epoch``."""
        if self.scheduler is not None:
            self.scheduler.remove()
        total = self.epochs * steps_per_epoch
        factor = lr_factor(self.config["lr_scheduler"], warmup_steps_of(self.config["warmup_steps"], total), total)
        self.scheduler = StepSchedule(self.optimizer, factor, offset=self.start_epoch * steps_per_epoch)
