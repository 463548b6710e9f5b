"""ETEGRecTrainer: RecBole's Trainer plus the tokenizer/recommender alternation.

Epoch e < epochs - finetune_epochs is a tokenizer epoch when e % cycle == 0, else a recommender
epoch; the last ``finetune_epochs`` train the recommender alone. At every phase change the
codebooks are copied across (recommender copy <-> tokenizer), and after each tokenizer epoch
every item is re-tokenized and the new code table pushed to the train/valid/test loaders.
Everything else (logging, validation, early stopping, checkpoints) is RecBole's.
"""
import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_etegrec.trainer.checkpoint import ResumableTrainerMixin
from recbole_etegrec.trainer.code_table import CodeTableTrainerMixin
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
        if self.distributed:  # every rank must read the checkpoint rank 0 writes
            name = [self.saved_model_file]
            torch.distributed.broadcast_object_list(name, src=0)
            self.saved_model_file = name[0]

    def _build_optimizer(self, **kwargs):
        kind, wd = self.config["optimizer"], self.config["weight_decay"]
        groups = self.model.recommender_parameter_groups(self.config["lr_codebook"])
        self.rec_optimizer = build_adamw(groups, self.config["lr_rec"], wd, kind)
        self.id_optimizer = build_adamw(self.model.tokenizer.parameters(), self.config["lr_id"], wd, kind)
        return self.rec_optimizer

    def phase_of(self, epoch):
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
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        if phase == "id":
            table = self.model.retokenize()
            self.model.sync_codebooks("to_rec")
            train_data.set_code_table(table.codes)  # the slot is shared: valid/test loaders follow
            self.logger.info(f"re-tokenized items: collision rate {table.collision_rate():.4f}, "
                             f"max suffix {table.max_suffix}")
        return loss

    def _ddp_for(self, phase):
        """One DDP per phase, built once while that phase's parameters are the trainable ones
        (construction also broadcasts rank 0's weights, so every rank starts equal)."""
        if phase not in self._ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp[phase] = DistributedDataParallel(self.model, device_ids=ids)
        return self._ddp[phase]

    # checkpoints: the mixin writes them; these are ETEGRec's extra parts
    lr_keys = ("lr_rec", "lr_id")

    def optimizer_states(self):
        return {"optimizer": self.rec_optimizer.state_dict(), "id_optimizer": self.id_optimizer.state_dict()}

    def load_optimizer_states(self, checkpoint):
        self.rec_optimizer.load_state_dict(checkpoint["optimizer"])
        self.id_optimizer.load_state_dict(checkpoint["id_optimizer"])

    def loss_phase(self):
        return f"{self.model.phase}-align{int(self.model.align)}"
