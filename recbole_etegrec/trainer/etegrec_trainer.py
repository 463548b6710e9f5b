"""ETEGRecTrainer: RecBole's Trainer plus the tokenizer/recommender alternation.

Epoch e < epochs - finetune_epochs is a tokenizer epoch when e % cycle == 0, else a recommender
epoch; the last ``finetune_epochs`` train the recommender alone. At every phase change the
codebooks are copied across (recommender copy <-> tokenizer), and after each tokenizer epoch
every item is re-tokenized and the new code table pushed to the train/valid/test loaders.
Everything else (logging, validation, early stopping, checkpoints) is RecBole's.

With ``log_tensorboard: True`` the RecBole TensorBoard writer (``log_tensorboard/<log name>/``)
also gets, per epoch, the mean batch value of each loss term (``ETEGRec/rec_code_loss`` or
``ETEGRec/id_vq_loss``, ``ETEGRec/sia``, ``ETEGRec/psa``), every validation metric
(``valid/<metric>``) and, at the start of ``fit`` (step ``start_epoch - 1``) and after every
tokenizer epoch, the tokenizer health (``trainer/health.py``: ``ETEGRec/tokenizer_recon``,
``ETEGRec/collision_rate``, ``ETEGRec/utilization_l<level>``, ``ETEGRec/entropy_l<level>``).
"""
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_etegrec import distributed
from recbole_etegrec.trainer.checkpoint import ResumableTrainerMixin
from recbole_etegrec.trainer.code_table_sync import CodeTableTrainerMixin
from recbole_etegrec.trainer.health import format_health, tokenizer_health
from recbole_etegrec.trainer.optim import build_adamw


class ETEGRecTrainer(ResumableTrainerMixin, CodeTableTrainerMixin, Trainer):
    def __init__(self, config, model):
        # RecBole wraps the whole model in one DDP at construction, with a GPU device id. The
        # trainable parameter set changes with the phase, which one DDP cannot follow, so we
        # keep RecBole's wrapper off and build one DDP per phase (``_ddp_for``).
        self.distributed = not config["single_spec"]
        config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = not self.distributed
        self.cycle, self.warm_epoch = config["cycle"], config["warm_epoch"]
        self.finetune_epochs = config["finetune_epochs"]
        self._ddp = {}
        self.log_tensorboard = bool(config["log_tensorboard"])
        if self.distributed:  # every rank must read the checkpoint rank 0 writes
            self.saved_model_file = distributed.broadcast_from_rank0(self.saved_model_file)

    def _build_optimizer(self, **kwargs):
        kind, wd = self.config["optimizer"], self.config["weight_decay"]
        groups = self.model.recommender_parameter_groups(self.config["lr_codebook"])
        self.rec_optimizer = build_adamw(groups, self.config["lr_rec"], wd, kind)
        self.id_optimizer = build_adamw(self.model.tokenizer.parameters(), self.config["lr_id"], wd, kind)
        return self.rec_optimizer

    def phase_of(self, epoch) -> str:
        """``id`` (tokenizer epoch) or ``rec`` (recommender epoch)."""
        if epoch >= self.epochs - self.finetune_epochs or self.cycle <= 1:
            return "rec"
        return "id" if epoch % self.cycle == 0 else "rec"

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        # Recommender epochs own the codebooks in the model's copy, tokenizer epochs in the RQ-VAE:
        # copying in at the start of a tokenizer epoch and out at its end syncs every phase change.
        self.epoch_start(train_data, epoch_idx)  # last checkpoint / RNG restore before the phase switch
        phase = self.phase_of(epoch_idx)
        if phase == "id":
            self.model.sync_codebooks("to_tokenizer")
        self.model.set_phase(phase, align=epoch_idx >= self.warm_epoch)
        if self.distributed:
            self.distributed_model = self._ddp_for(phase)
        self.optimizer = self.id_optimizer if phase == "id" else self.rec_optimizer
        name = "tokenizer" if phase == "id" else "recommender"
        self.logger.info(set_color(f"epoch {epoch_idx}: {name} epoch", "cyan"))
        self._batches = 0
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self._log_loss_terms(epoch_idx, phase, loss)
        if phase == "id":
            table = self.model.retokenize()
            self.model.sync_codebooks("to_rec")
            train_data.set_code_table(table.codes)  # the slot is shared: valid/test loaders follow
            self.logger.info(f"re-tokenized items: collision rate {table.collision_rate():.4f}, "
                             f"max suffix {table.max_suffix}")
            self._log_health(epoch_idx, always_log=True)
        return loss

    # -- TensorBoard (log_tensorboard) -------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None) -> tuple:
        self._log_health(self.start_epoch - 1)  # the tokenizer the run starts from
        try:
            return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                               show_progress=show_progress, callback_fn=callback_fn)
        finally:
            if self.log_tensorboard:
                self.tensorboard.flush()

    def _check_nan(self, loss):
        self._batches = getattr(self, "_batches", 0) + 1  # once per batch: the loss-term means
        return super()._check_nan(loss)

    def _tensorboard_on(self):
        return self.log_tensorboard and self._is_writer()

    def _log_loss_terms(self, epoch_idx, phase, loss):
        """Mean per batch of each term ``calculate_loss`` returned: (main,) or (main, SIA, PSA)."""
        if not self._tensorboard_on() or loss is None or not self._batches:
            return
        terms = loss if isinstance(loss, tuple) else (loss,)
        names = ("id_vq_loss" if phase == "id" else "rec_code_loss", "sia", "psa")
        for name, value in zip(names, terms):
            self.tensorboard.add_scalar(f"ETEGRec/{name}", float(value) / self._batches, epoch_idx)

    def _log_health(self, step, always_log=False):
        if not (self._tensorboard_on() or always_log):
            return
        health = tokenizer_health(self.model)
        if always_log:
            self.logger.info(format_health(health))
        if not self._tensorboard_on():
            return
        self.tensorboard.add_scalar("ETEGRec/tokenizer_recon", health["recon"], step)
        self.tensorboard.add_scalar("ETEGRec/collision_rate", health["collision_rate"], step)
        for level, (util, ent) in enumerate(zip(health["utilization"], health["entropy"])):
            self.tensorboard.add_scalar(f"ETEGRec/utilization_l{level}", util, step)
            self.tensorboard.add_scalar(f"ETEGRec/entropy_l{level}", ent, step)

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        if self._tensorboard_on():  # RecBole itself writes only the valid score ("Vaild_score")
            for metric, value in (result or {}).items():
                self.tensorboard.add_scalar(f"valid/{metric}", float(value), getattr(self, "_epoch_idx", 0))
        return score, result

    def _ddp_for(self, phase):
        """One DDP per phase, built once while that phase's parameters are the trainable ones
        (construction also broadcasts rank 0's weights, so every rank starts equal)."""
        if phase not in self._ddp:
            self._ddp[phase] = distributed.wrap_ddp(self.model, self.device)
        return self._ddp[phase]

    # checkpoints: the mixin writes them; these are ETEGRec's extra parts
    lr_keys = ("lr_rec", "lr_id")

    def optimizer_states(self) -> dict:
        return {"optimizer": self.rec_optimizer.state_dict(), "id_optimizer": self.id_optimizer.state_dict()}

    def load_optimizer_states(self, checkpoint) -> None:
        self.rec_optimizer.load_state_dict(checkpoint["optimizer"])
        self.id_optimizer.load_state_dict(checkpoint["id_optimizer"])

    def loss_phase(self) -> str:
        return f"{self.model.phase}-align{int(self.model.align)}"
