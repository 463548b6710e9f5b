"""The process's random state (python, numpy, torch CPU and CUDA) as one picklable dict.

Checkpoints store it so a resumed run continues the uninterrupted run's random stream, and
``rng_scope`` runs a block (tokenizer pretraining or loading) without shifting the caller's
stream, so a cache hit and a cache miss leave the training run in the same random state.
"""
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def get_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def rng_scope() -> Iterator[None]:
    """Run the block with its own random stream; the caller's state is restored afterwards."""
    saved = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)
