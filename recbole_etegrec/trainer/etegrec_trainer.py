"""ETEGRecTrainer: RecBole's Trainer plus the official ETEGRec recipe.

Two stages, each one RecBole ``fit`` (validation, early stopping, best checkpoint are RecBole's):

1. Alternation, epochs ``0 .. epochs - 1``: epoch e is a tokenizer epoch when e % cycle == 0, else
   a recommender epoch; SIA/PSA are on from ``warm_epoch`` (in tokenizer epochs after the first
   aligned recommender epoch: ``aligned``). At every phase change the codebooks
   are copied across (recommender copy <-> tokenizer) and every gradient is cleared (the
   inactive optimizer's stale ``.grad`` would otherwise enter the next phase's clipping norm);
   after each tokenizer epoch every item is re-tokenized and the new code table goes to the
   train/valid/test loaders. Each phase has its own AdamW and its own schedule (``lr_scheduler``,
   ``rec_warmup_steps`` / ``id_warmup_steps``), counted in that phase's optimizer steps.
2. Finetune, up to ``finetune_epochs`` more: the best checkpoint of stage 1 is reloaded, the
   tokenizer and the codes are frozen, the code loss alone trains the recommender with a fresh
   AdamW at ``finetune_lr`` (cosine to 0 over the stage, no warm-up), validated every
   ``finetune_eval_step`` epochs with the early-stopping patience ``finetune_stopping_step``.

Gradients are clipped to ``clip_grad_norm`` in both stages (RecBole's key, applied in its loop).

The tokenizer guard: after every tokenizer epoch the items are re-tokenized and the tokenizer's
health is compared with the tokenizer the run started from; an epoch that raised the collision
rate by more than ``tokenizer_guard_collision`` or left a level's code utilization below
``tokenizer_guard_utilization`` is undone (tokenizer weights, code table and tokenizer optimizer
restored; logged as ``UNDONE``). Dead codes are handled by this guard, not by the standalone
pretraining's re-seeding: re-seeding would move codebook vectors the recommender has just learnt
to generate, while the guard only ever keeps a tokenizer the recommender has already seen.
``health_history`` keeps every health line of the run (the benchmark writes it to run.yaml).

With ``log_tensorboard: True`` the RecBole TensorBoard writer (``log_tensorboard/<log name>/``)
and with ``log_wandb: True`` RecBole's W&B run (under ``train/``, against ``train_step``) also
get, per epoch, the mean batch value of each loss term (``ETEGRec/rec_code_loss`` or
``ETEGRec/id_vq_loss``, ``ETEGRec/sia``, ``ETEGRec/psa``), every validation metric
(``valid/<metric>``; W&B has them from RecBole) and, at the start of ``fit`` (step ``start_epoch - 1``) and after every
tokenizer epoch, the tokenizer health (``trainer/health.py``: ``ETEGRec/tokenizer_recon``,
``ETEGRec/collision_rate``, ``ETEGRec/utilization_l<level>``, ``ETEGRec/entropy_l<level>``, the
last being the per-level entropy of the SIA code distributions, also logged as text) and, after
a tokenizer epoch, ``ETEGRec/items_recoded``: the share of items it moved to another code tuple.
"""
import copy
import os
from typing import Optional, Tuple

from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_etegrec import distributed
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.trainer.checkpoint import ResumableTrainerMixin
from recbole_etegrec.trainer.code_table_sync import CodeTableTrainerMixin
from recbole_etegrec.trainer.health import (
    format_health,
    guard_verdict,
    items_recoded,
    sia_gradient_ratio,
    tokenizer_health,
)
from recbole_etegrec.trainer.optim import StepSchedule, build_adamw, lr_factor, warmup_steps_of


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
        self.alternation_epochs = config["epochs"]
        self.finetune_start = None  # first finetune epoch, known once stage 1 has ended
        self.finetune_optimizer, self.schedules = None, {}
        self._ddp = {}
        self.log_tensorboard = bool(config["log_tensorboard"])
        self.guard = (config["tokenizer_guard_collision"], config["tokenizer_guard_utilization"])
        self.start_health = tokenizer_health(model)  # the pretrained tokenizer (before any resume)
        self.health_history = []  # [{"epoch": e, **health}] of the start and of every tokenizer epoch
        self._last_batch = None

    def _build_optimizer(self, **kwargs):
        kind, wd = self.config["optimizer"], self.config["weight_decay"]
        groups = self.model.recommender_parameter_groups(self.config["lr_codebook"])
        self.rec_optimizer = build_adamw(groups, self.config["lr_rec"], wd, kind)
        self.id_optimizer = build_adamw(self.model.tokenizer.parameters(), self.config["lr_id"], wd, kind)
        return self.rec_optimizer

    def phase_of(self, epoch) -> str:
        """``id`` (tokenizer epoch), ``rec`` (recommender epoch) or ``finetune``."""
        if self.finetune_start is not None and epoch >= self.finetune_start:
            return "finetune"
        if self.cycle <= 1:
            return "rec"
        return "id" if epoch % self.cycle == 0 else "rec"

    def aligned(self, epoch) -> bool:
        """SIA/PSA are on from ``warm_epoch`` in recommender epochs, and in tokenizer epochs only
        once a recommender epoch has trained the adapters with them: aligned to the untrained
        ``enc_adapter``, the first tokenizer epoch of ml-100k left 12% of level-0 codes in use."""
        phase = self.phase_of(epoch)
        if phase == "finetune" or epoch < self.warm_epoch:
            return False
        return phase == "rec" or "rec" in {self.phase_of(e) for e in range(self.warm_epoch, epoch)}

    # -- the two stages ----------------------------------------------------------------------
    def fit_stages(self, train_data, valid_data=None, **kwargs) -> Tuple[float, Optional[dict]]:
        steps = len(train_data)
        result = (self.best_valid_score, self.best_valid_result)
        if self.finetune_start is None:  # not resumed inside the finetune stage
            self.epochs = self.alternation_epochs
            self._build_schedules(steps)
            # RecBole's fit, given no epoch to run, would overwrite the best checkpoint with the
            # current weights: a run resumed after its last alternation epoch skips the call
            if self.start_epoch < self.epochs:
                result = super().fit_stages(train_data, valid_data, **kwargs)
            if not self.finetune_epochs:
                return result
            self.finetune_start = self.last_epoch_done() + 1
            self._start_finetune(train_data, saved=kwargs.get("saved", True))
        self.epochs = self.finetune_start + self.finetune_epochs
        self._build_finetune_schedule(steps)
        return super().fit_stages(train_data, valid_data, **kwargs)

    def build_schedules(self, steps_per_epoch) -> None:
        """The schedules of the stage ``start_epoch`` is in (``run_epoch``)."""
        finetune = self.phase_of(self.start_epoch) == "finetune"
        (self._build_finetune_schedule if finetune else self._build_schedules)(steps_per_epoch)

    def _build_schedules(self, steps_per_epoch):
        """One schedule per phase optimizer; its horizon is that phase's steps over the whole
        stage, and a resumed run starts it at the steps that phase has already taken."""
        self._drop_schedules()
        epochs = [self.phase_of(e) for e in range(self.alternation_epochs)]
        done = epochs[:self.start_epoch]
        for phase, optimizer, key in (("rec", self.rec_optimizer, "rec_warmup_steps"),
                                      ("id", self.id_optimizer, "id_warmup_steps")):
            total = epochs.count(phase) * steps_per_epoch
            factor = lr_factor(self.config["lr_scheduler"], warmup_steps_of(self.config[key], total), total)
            self.schedules[phase] = StepSchedule(optimizer, factor, offset=done.count(phase) * steps_per_epoch)

    def _drop_schedules(self):
        for schedule in self.schedules.values():
            schedule.remove()  # its hook would keep stepping a replaced schedule
        self.schedules = {}

    def _build_finetune_schedule(self, steps_per_epoch):
        self._drop_schedules()
        if self.finetune_optimizer is None:
            self._new_finetune_optimizer()
        total = self.finetune_epochs * steps_per_epoch
        factor = lr_factor("cosine", 0, total)
        offset = max(self.start_epoch - self.finetune_start, 0) * steps_per_epoch
        self.schedules = {"finetune": StepSchedule(self.finetune_optimizer, factor, offset=offset)}

    def _new_finetune_optimizer(self):
        groups = self.model.recommender_parameter_groups(self.config["lr_codebook"])
        self.finetune_optimizer = build_adamw(groups, self.config["finetune_lr"], self.config["weight_decay"],
                                              self.config["optimizer"])

    def _start_finetune(self, train_data, saved=True):
        """Reload stage 1's best checkpoint (weights and code table), fresh optimizer, counters reset."""
        path = self.saved_model_file
        if saved:
            distributed.barrier()  # every rank, before any looks: rank 0 may still be writing it
        if saved and os.path.isfile(path):
            checkpoint = self._load_checkpoint(path)  # weights + code table, as evaluate reloads them
            self.logger.info(set_color(f"finetune: reloaded the best checkpoint (epoch {checkpoint['epoch']}) "
                                       f"{path}", "cyan"))
        else:
            self.logger.info(set_color("finetune: no best checkpoint (saved=False or no validation): "
                                       "continuing from the last epoch's weights", "cyan"))
        self.push_code_table(train_data)
        self.model.zero_grad(set_to_none=True)
        self._new_finetune_optimizer()
        self.cur_step = 0  # early-stopping patience restarts; the best score to beat is kept
        self._finetune_validation()
        self.start_epoch = self.finetune_start
        self._ddp = {}  # the DDP of the recommender phase belongs to the old parameter state
        if self._saved:
            self.save_last(self.finetune_start - 1, train_data)  # a crash in the first finetune epoch resumes here

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        # Recommender epochs own the codebooks in the model's copy, tokenizer epochs in the RQ-VAE:
        # copying in at the start of a tokenizer epoch and out at its end syncs every phase change.
        self.epoch_start(train_data, epoch_idx)  # last checkpoint / RNG restore before the phase switch
        phase = self.phase_of(epoch_idx)
        if phase == "id":
            # the guard's undo point: tokenizer and code table as they last agreed (before the sync)
            before = (self.model.tokenizer_state(), copy.deepcopy(self.id_optimizer.state_dict()))
            self.model.sync_codebooks("to_tokenizer")
        # the other phase's gradients must never reach this phase's clipping norm or step
        self.model.zero_grad(set_to_none=True)
        self.model.set_phase("id" if phase == "id" else "rec", align=self.aligned(epoch_idx))
        if self.distributed:
            self.distributed_model = self._ddp_for("id" if phase == "id" else "rec")
        self.optimizer = {"id": self.id_optimizer, "rec": self.rec_optimizer,
                          "finetune": self.finetune_optimizer}[phase]
        name = {"id": "tokenizer", "rec": "recommender", "finetune": "finetune (code loss only)"}[phase]
        lr = ", ".join(f"{g['lr']:.3g}" for g in self.optimizer.param_groups)
        self.logger.info(set_color(f"epoch {epoch_idx}: {name} epoch, lr {lr}", "cyan"))
        self._batches = 0
        if phase == "id":
            loss_func = loss_func or self._keeping_last_batch(self.model.calculate_loss)
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self._log_loss_terms(epoch_idx, phase, loss)
        if phase == "id":
            self._end_tokenizer_epoch(train_data, epoch_idx, before)
        return loss

    def _keeping_last_batch(self, loss_func):
        def wrapped(interaction):
            self._last_batch = interaction  # a reference: the gradient probe reruns it after the epoch
            return loss_func(interaction)
        return wrapped

    def _end_tokenizer_epoch(self, train_data, epoch_idx, before):
        """Measure the new tokenizer, then keep it (re-tokenize every item) or undo the epoch."""
        model = self.model
        model.tokenizer.calibrate(model.item_emb[1:])
        health = tokenizer_health(model)
        if model.align and self._last_batch is not None:
            health["sia_vq_grad_ratio"] = sia_gradient_ratio(model, self._last_batch)
        self._last_batch = None
        health["undone"] = guard_verdict(health, self.start_health, *self.guard)
        if not health["undone"]:
            try:
                table = model.retokenize()
            except EtegrecError as err:  # more items on one code than suffix codes: a collapse too
                if self.guard == (None, None):
                    raise
                health["undone"] = str(err).split(":")[0]
        state, optimizer_state = before
        if health["undone"]:
            model.restore_tokenizer(state)
            self.id_optimizer.load_state_dict(optimizer_state)
            health["items_recoded"] = 0.0
        else:
            health["items_recoded"] = items_recoded(state["code_table"].codes, table.codes)
            model.sync_codebooks("to_rec")
            self.logger.info(f"re-tokenized items: collision rate {table.collision_rate():.4f}, "
                             f"max suffix {table.max_suffix}")
        train_data.set_code_table(model.code_table.codes)  # the slot is shared: valid/test loaders follow
        self._log_health(epoch_idx, always_log=True, health=health)

    # -- TensorBoard and W&B (log_tensorboard, log_wandb) --------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None) -> tuple:
        self._log_health(self.start_epoch - 1, always_log=True)  # the tokenizer the run starts from
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

    def _scalars(self, values: dict, step) -> None:
        """One sink for the plugin's per-epoch figures: TensorBoard (``log_tensorboard``) and W&B
        (``log_wandb``, through RecBole's logger: ``train/<name>`` against ``train_step``)."""
        if not self._is_writer():
            return
        if self.log_tensorboard:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.config["log_wandb"]:
            self.wandblogger.log_metrics({**values, "train_step": step}, head="train")

    def _scalars_on(self):
        return (self.log_tensorboard or bool(self.config["log_wandb"])) and self._is_writer()

    def _log_loss_terms(self, epoch_idx, phase, loss):
        """Mean per batch of each term ``calculate_loss`` returned: (main,) or (main, SIA, PSA)."""
        if not self._scalars_on() or loss is None or not self._batches:
            return
        terms = loss if isinstance(loss, tuple) else (loss,)
        names = ("id_vq_loss" if phase == "id" else "rec_code_loss", "sia", "psa")  # finetune: code loss
        self._scalars({f"ETEGRec/{name}": float(value) / self._batches for name, value in zip(names, terms)},
                      epoch_idx)

    def _log_health(self, step, always_log=False, health=None):
        health = health or tokenizer_health(self.model)
        self.health_history.append({"epoch": step, **health})
        if always_log:
            self.logger.info(format_health(health))
        if not self._scalars_on():
            return
        values = {"ETEGRec/tokenizer_recon": health["recon"], "ETEGRec/collision_rate": health["collision_rate"]}
        for level, (util, ent) in enumerate(zip(health["utilization"], health["entropy"])):
            values.update({f"ETEGRec/utilization_l{level}": util, f"ETEGRec/entropy_l{level}": ent})
        for level, ratio in enumerate(health.get("sia_vq_grad_ratio") or ()):
            values[f"ETEGRec/sia_vq_grad_ratio_l{level}"] = ratio
        if "items_recoded" in health:
            values["ETEGRec/items_recoded"] = health["items_recoded"]
        if "undone" in health:
            values["ETEGRec/tokenizer_epoch_undone"] = float(bool(health["undone"]))
        self._scalars(values, step)

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        if self._tensorboard_on():  # RecBole itself writes only the valid score ("Vaild_score"); W&B gets all
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
    lr_keys = ("lr_rec", "lr_id", "finetune_lr")

    def optimizer_states(self) -> dict:
        states = {"optimizer": self.rec_optimizer.state_dict(), "id_optimizer": self.id_optimizer.state_dict(),
                  "finetune_start": self.finetune_start}
        if self.finetune_optimizer is not None:
            states["finetune_optimizer"] = self.finetune_optimizer.state_dict()
        return states

    def load_optimizer_states(self, checkpoint) -> None:
        self.rec_optimizer.load_state_dict(checkpoint["optimizer"])
        self.id_optimizer.load_state_dict(checkpoint["id_optimizer"])
        self.finetune_start = checkpoint.get("finetune_start")
        if checkpoint.get("finetune_optimizer") is not None:
            self._new_finetune_optimizer()
            self.finetune_optimizer.load_state_dict(checkpoint["finetune_optimizer"])
            self._finetune_validation()

    def _finetune_validation(self):
        self.eval_step = self.config["finetune_eval_step"]
        self.stopping_step = self.config["finetune_stopping_step"]

    def loss_phase(self) -> str:
        return f"{self.model.phase}-align{int(self.model.align)}"
