"""``CodeTableTrainerMixin``: the trainer side shared by models with a ``code_table`` (TIGER,
ETEGRec). Before every training epoch and every evaluation the model's current code table goes
to the loaders (they share one slot, so train/valid/test follow). In ``evaluate`` the best
checkpoint is reloaded first (weights + ``other_parameter``, where the code table lives), so the
loaders always tokenize with the table of the weights being evaluated.
"""
from typing import Optional

from recbole_etegrec import distributed
from recbole_etegrec.trainer.checkpoint import read_checkpoint
from recbole_etegrec.trainer.lean import load_model_state


class CodeTableTrainerMixin:
    """Put before ``Trainer`` in the bases: ``class XTrainer(CodeTableTrainerMixin, Trainer)``."""

    def push_code_table(self, loader) -> None:
        if loader is not None and hasattr(loader, "set_code_table"):
            loader.set_code_table(self.model.code_table.codes)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.push_code_table(train_data)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False) -> Optional[dict]:
        if not eval_data:
            return None
        if load_best_model:
            distributed.barrier()  # under DDP rank 0 may still be writing the checkpoint
        if load_best_model:
            self._load_checkpoint(model_file or self.saved_model_file)
        self.push_code_table(eval_data)
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _load_checkpoint(self, path):
        """Model weights and ``other_parameter`` (the code table) from a checkpoint this trainer wrote."""
        checkpoint = read_checkpoint(path, self.device)  # one clear line if missing or truncated
        load_model_state(self.model, checkpoint, path, self.config["llama_path"])  # lean: base from llama_path
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading model structure and parameters from {path}")
        return checkpoint
