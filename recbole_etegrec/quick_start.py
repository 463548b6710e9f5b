"""One pipeline for every model: Config -> dataset -> split -> (code models: item tokenizer stage)
-> model -> trainer.fit -> evaluate."""
import os
import time
from logging import getLogger
from typing import TYPE_CHECKING, Tuple

import torch
from recbole.trainer import Trainer
from recbole.utils import init_logger, init_seed, set_color

from recbole_etegrec.config import Config
from recbole_etegrec.data import create_dataset, data_preparation
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import check_writable
from recbole_etegrec.registry import get_model, get_trainer
from recbole_etegrec.stages.item_tokenizer import prepare_item_tokenizer
from recbole_etegrec.trainer.checkpoint import ResumableTrainerMixin

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


def load_split(config) -> Tuple["Dataset", "AbstractDataLoader", "AbstractDataLoader", "AbstractDataLoader"]:
    """Seed, logger and RecBole's split for ``config``: ``(dataset, train, valid, test)``; the
    code models get code-sequence loaders."""
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    return (dataset, *data_preparation(config, dataset))


def load_data(config) -> Tuple["Dataset", "AbstractDataLoader", "AbstractDataLoader", "AbstractDataLoader"]:
    """``load_split`` and, for code models, the item tokenizer stage: ``(dataset, train, valid,
    test)``, the code models finding the tokenizer on ``train._dataset``. Shared by training,
    the benchmarks and the tests."""
    dataset, train, valid, test = load_split(config)
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
    if config["resume_file"] and not os.path.isfile(config["resume_file"]):
        raise EtegrecError(f"resume_file '{config['resume_file']}' does not exist: give a checkpoint "
                           "this model's trainer wrote (saved/<Model>-<time>.pth or its -last.pth)")
    _, train_data, valid_data, test_data = load_data(config)
    logger = getLogger()

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    if config["device"].type == "cuda":
        torch.cuda.reset_peak_memory_stats(config["device"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(net)
    trainer = resumable(get_trainer(config["MODEL_TYPE"], config["model"]))(config, net)
    if config["resume_file"]:
        trainer.resume_checkpoint(config["resume_file"])  # continues at the epoch after it

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
    if evaluate_test:
        test_result = trainer.evaluate(test_data, load_best_model=saved,
                                       show_progress=config["show_progress"])
    eval_time = time.time() - start

    history = list(getattr(trainer, "valid_history", []))
    pick = max if trainer.valid_metric_bigger else min
    logger.info(set_color("best valid ", "yellow") + f": {dict(best_valid_result or {})}")
    logger.info(set_color("test result", "yellow") + f": {dict(test_result)}")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": best_valid_score,
        "valid_result": dict(best_valid_result or {}),
        "test_result": dict(test_result),
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
