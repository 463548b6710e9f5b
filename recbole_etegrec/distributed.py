"""Everything multi-process, in one place. Processes come from ``accelerate launch`` / ``torchrun``
(never a home-made launcher); this module sets up the process group from their environment and
offers the few collective steps the plugin needs.
"""
import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(config_dict: dict) -> None:
    """Let accelerate set up the process group (gloo on CPU, nccl on GPU) and tell RecBole it runs
    distributed, so its loaders shard users with a DistributedSampler and its evaluator gathers
    metrics. ``config_dict`` is RecBole's ``final_config_dict``."""
    from accelerate import PartialState

    # accelerate only sets up a CPU (gloo) group when asked: ACCELERATE_USE_CPU=1 or no GPU
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    config_dict.update(
        single_spec=False, local_rank=state.local_process_index, world_size=state.num_processes,
        nproc=state.num_processes, offset=0,
        device=torch.device("cpu") if state.device.type == "cpu" else state.device,
    )
    if state.process_index != 0:
        config_dict.update(state="error", show_progress=False, verbose=False)


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` / ``accelerate launch`` job (or a single process), before any
    config exists: the one that prints tables and writes benchmark folders."""
    return int(os.environ.get("RANK", "0")) == 0


def drop_log_file() -> None:
    """Another rank's RecBole log file stays empty (its log level is ``error``): close and remove it,
    so a run leaves one log file, rank 0's."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
            if os.path.isfile(handler.baseFilename) and os.path.getsize(handler.baseFilename) == 0:
                os.remove(handler.baseFilename)


def is_writer(config) -> bool:
    """The process that writes files (checkpoints, tables): the only one, or rank 0."""
    return bool(config["single_spec"]) or config["local_rank"] == 0


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def broadcast_from_rank0(value) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not is_distributed():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_process_first() -> Iterator[None]:
    """Under DDP, let rank 0 run the block (e.g. build a cache) before the other ranks."""
    rank = torch.distributed.get_rank() if is_distributed() else 0
    if rank != 0:
        barrier()
    yield
    if rank == 0:
        barrier()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over ``model``'s currently trainable parameters (construction also
    broadcasts rank 0's weights, so every rank starts equal)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
