"""One pipeline for every model: Config -> dataset -> split -> (code models: item tokenizer stage)
-> model -> trainer.fit -> evaluate."""
import os
import time
from logging import getLogger
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import numpy as np
import torch
from recbole.evaluator.register import metrics_dict
from recbole.trainer import Trainer
from recbole.utils import init_seed, set_color

from recbole_etegrec import compat, distributed
from recbole_etegrec.config import Config
from recbole_etegrec.data import create_dataset, data_preparation
from recbole_etegrec.data.identity import check_same_data, data_identity
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import check_writable, new_run_id
from recbole_etegrec.registry import get_model, get_trainer
from recbole_etegrec.stages.item_embeddings import publish_sasrec_table
from recbole_etegrec.stages.item_tokenizer import prepare_item_tokenizer
from recbole_etegrec.trainer.checkpoint import ResumableTrainerMixin, check_resume_config, read_checkpoint

if TYPE_CHECKING:
    from recbole.data.dataloader import AbstractDataLoader
    from recbole.data.dataset import Dataset

REPORT_METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def peak_memory_mb(device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_split(config, identity=None, source=None) -> Tuple[
        "Dataset", "AbstractDataLoader", "AbstractDataLoader", "AbstractDataLoader"]:
    """Seed, logger and RecBole's split for ``config``: ``(dataset, train, valid, test)``; the
    code models get code-sequence loaders. With a checkpoint's ``identity`` (``data/identity.py``)
    the data is first renumbered to the checkpoint's user and item ids (``source`` names it)."""
    init_seed(config["seed"], config["reproducibility"])
    # RecBole's init_logger creates ./log/<model> with a check-then-makedirs that races between ranks;
    # it and RecBole's TensorBoard folder (./log_tensorboard) need a writable working directory
    check_writable(os.path.join("log", str(config["model"])), "RecBole's log folder",
                   fix="run from a writable working directory")
    if not getattr(config, "run_id", None):  # names this run's log and checkpoints (rank 0's under DDP)
        config.run_id = distributed.broadcast_from_rank0(new_run_id())
    compat.init_logger(config, config.run_id)
    if not distributed.is_writer(config):
        distributed.drop_log_file()
    logger = getLogger()
    logger.info(config)
    dataset = create_dataset(config, identity, source)
    logger.info(dataset)
    return (dataset, *data_preparation(config, dataset))


def load_data(config, identity=None, source=None) -> Tuple[
        "Dataset", "AbstractDataLoader", "AbstractDataLoader", "AbstractDataLoader"]:
    """``load_split`` and, for code models, the item tokenizer stage: ``(dataset, train, valid,
    test)``, the code models finding the tokenizer on ``train._dataset``. Shared by training,
    the benchmarks and the tests."""
    dataset, train, valid, test = load_split(config, identity, source)
    if getattr(config.model_class, "uses_item_codes", False):
        prepare_item_tokenizer(config, train._dataset)  # before the model: it never trains in __init__
    return dataset, train, valid, test


def run(model, dataset, config_file_list=None, config_dict=None, cmd_args=None, saved=True,
        callback_fn=None, evaluate_test=True) -> dict:
    """Train and evaluate one model; returns a dict of metrics, timings and sizes.

    Every call builds the split anew; RecBole's leave-one-out split by time order is
    deterministic, so models run one after another see identical train/valid/test users.
    ``callback_fn(epoch, valid_score, valid_result)`` runs after every validation.
    ``evaluate_test=False`` never touches the test split (hyper-parameter search trials).
    """
    run_start = time.time()
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, cmd_args=cmd_args)
    check_writable(config["checkpoint_dir"], "checkpoint_dir")  # before hours of training, not after
    checkpoint, changes, source = None, [], f"resume_file '{config['resume_file']}'"
    if config["resume_file"]:
        if not os.path.isfile(config["resume_file"]):
            raise EtegrecError(f"{source} does not exist: give a checkpoint this model's trainer wrote "
                               "(saved/<Model>-<time>-<run id>.pth or its -last.pth)")
        checkpoint = read_checkpoint(config["resume_file"], "cpu")  # read once: checked here, resumed below
        changes = check_resume_config(checkpoint, config)  # an error unless resume_allow_change
    resumed = checkpoint.get("data") if checkpoint else None
    dataset, train_data, valid_data, test_data = load_data(config, resumed, source)
    identity = data_identity(dataset)  # every checkpoint of the run carries it
    check_same_data(resumed, identity, source)
    logger = getLogger()
    for change in changes:
        logger.warning(f"{source}: resuming with a changed setting, {change}")

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    if config["device"].type == "cuda":
        torch.cuda.reset_peak_memory_stats(config["device"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(net)
    trainer = resumable(get_trainer(config["MODEL_TYPE"], config["model"]))(config, net)
    trainer.data_identity = identity
    if config["resume_file"]:
        trainer.resume_checkpoint(config["resume_file"], checkpoint)  # continues at the epoch after it
        checkpoint = None

    fit_callback = None
    if callback_fn is not None:
        _remember_valid_results(trainer)
        fit_callback = lambda epoch, score: callback_fn(epoch, score, trainer.last_valid_result)  # noqa: E731

    start = time.time()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"],
        callback_fn=fit_callback,
    )
    train_time = time.time() - start
    start = time.time()
    test_result = {}
    per_user = capture_per_user(trainer, test_data._dataset) if evaluate_test else None
    if evaluate_test:
        test_result = trainer.evaluate(test_data, load_best_model=saved,
                                       show_progress=config["show_progress"])
    eval_time = time.time() - start
    if config["model"] == "SASRec" and saved and evaluate_test and config["local_rank"] == 0:
        # the best epoch is loaded: a tokenizer stage with the same SASRec settings reuses it
        publish_sasrec_table(config, net, train_data._dataset)

    history = list(getattr(trainer, "valid_history", []))
    pick = max if trainer.valid_metric_bigger else min
    logger.info(set_color("best valid ", "yellow") + f": {dict(best_valid_result or {})}")
    logger.info(set_color("test result", "yellow") + f": {dict(test_result)}")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        # RecBole's run_recbole contract (best_valid_score, valid_score_bigger, best_valid_result,
        # test_result), then the plugin's keys; valid_result is the best one, under its older name
        "best_valid_score": best_valid_score,
        "valid_score_bigger": bool(config["valid_metric_bigger"]),
        "best_valid_result": dict(best_valid_result or {}),
        "test_result": dict(test_result),
        "valid_result": dict(best_valid_result or {}),
        "test_per_user": per_user() if per_user else None,  # the paired bootstrap's input (benchmark.py)
        "train_time": train_time,
        "eval_time": eval_time,
        "params": sum(p.numel() for p in net.parameters()),
        "peak_mem_mb": peak_memory_mb(config["device"]),
        "saved_model_file": trainer.saved_model_file if saved else None,
        # the benchmark's convergence report: validation curve, stopping and best epochs, wall time
        "valid_history": history,
        "epochs_trained": trainer.last_epoch_done() + 1,
        "best_epoch": pick(history, key=lambda h: h[1])[0] if history else None,
        "finetune_start": getattr(trainer, "finetune_start", None),
        "tokenizer_health": getattr(trainer, "health_history", None),  # ETEGRec: after every tokenizer epoch
        "wall_time": time.time() - run_start,
    }


def resumable(trainer_class) -> type:
    """RecBole's trainers (SASRec, ...) get the plugin's atomic, resumable checkpoints too."""
    if issubclass(trainer_class, ResumableTrainerMixin) or not issubclass(trainer_class, Trainer):
        return trainer_class
    return type(trainer_class.__name__, (ResumableTrainerMixin, trainer_class), {})


def _remember_valid_results(trainer):
    """Keep the latest full valid result on the trainer: RecBole's callback only gets the score."""
    valid_epoch = trainer._valid_epoch
    trainer.last_valid_result = None

    def wrapped(valid_data, show_progress=False):
        score, result = valid_epoch(valid_data, show_progress=show_progress)
        trainer.last_valid_result = dict(result)
        return score, result

    trainer._valid_epoch = wrapped


def capture_per_user(trainer, dataset) -> Callable[[], Optional[dict]]:
    """Keep what RecBole's next evaluation sees, per user: the user id of every row the Collector
    gets (``eval_batch_collect``) and the data struct the Evaluator gets (``evaluate``). Call before
    the test evaluation; the returned function then gives ``per_user_metrics`` of it. Hooks on
    these two objects, not on the trainer's ``evaluate``: the code models' trainers override
    ``evaluate`` but all end in RecBole's, which feeds exactly these two."""
    kept = {"users": [], "struct": None}
    collect, evaluate = trainer.eval_collector.eval_batch_collect, trainer.evaluator.evaluate
    uid_field = trainer.config["USER_ID_FIELD"]

    def collect_users(scores, interaction, positive_u, positive_i):
        users = interaction[uid_field].cpu()
        kept["users"].append(users if len(users) == len(scores) else None)  # None: rows are not users
        return collect(scores, interaction, positive_u, positive_i)

    def keep_struct(struct):
        kept["struct"] = struct
        return evaluate(struct)

    trainer.eval_collector.eval_batch_collect = collect_users
    trainer.evaluator.evaluate = keep_struct
    # under DDP a rank's struct holds only its own users: no per-user arrays there
    return lambda: per_user_metrics(trainer.config, kept, dataset) if trainer.config["single_spec"] else None


def per_user_metrics(config, kept, dataset) -> Optional[dict]:
    """``{"users": user tokens, "recall@10": values, ...}`` for every recall/ndcg in REPORT_METRICS,
    from RecBole's own metric classes on the kept struct (their mean is RecBole's reported value),
    sorted by user id: the code models' length-grouped loaders score users in another order than
    RecBole's, and sorting gives every model on one split the same order. None when the evaluation
    was not one row per user (negative sampling, several test rows per user: nothing to pair users
    by) or no top-k struct was collected."""
    struct, users = kept["struct"], kept["users"]
    if struct is None or "rec.topk" not in struct or not users or any(u is None for u in users):
        return None
    users = torch.cat(users).numpy()
    pos_index, pos_len = metrics_dict["recall"](config).used_info(struct)
    if len(users) != len(pos_len) or len(np.unique(users)) != len(users):
        return None
    order = np.argsort(users, kind="stable")
    result = {"users": np.asarray(dataset.id2token(dataset.uid_field, users[order])).astype(str)}
    for name in REPORT_METRICS:
        metric, k = name.split("@")
        if metric in ("recall", "ndcg") and int(k) <= pos_index.shape[1]:
            values = metrics_dict[metric](config).metric_info(pos_index, pos_len)[:, int(k) - 1]
            result[name] = values[order].astype(np.float64)
    return result
