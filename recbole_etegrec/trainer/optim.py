"""AdamW for the plugin trainers (bitsandbytes 8-bit AdamW when asked and available) and the
per-step LR schedules they share, attached without touching RecBole's training loop."""
import math
from logging import getLogger
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "inverse_sqrt", "cosine")


def build_adamw(params, lr, weight_decay, kind="adamw") -> torch.optim.Optimizer:
    """``params``: parameters or torch param-group dicts (a group's own ``lr`` wins)."""
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [p for p in params if p.requires_grad or p.grad is None]
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb  # imported lazily: ~7 s

            return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
        except Exception as err:  # no bitsandbytes build for this platform/device
            getLogger().warning(f"optimizer adamw8bit unavailable ({type(err).__name__}: {err}); "
                                "falling back to torch.optim.AdamW")
    elif kind != "adamw":
        from recbole_etegrec.errors import EtegrecError

        raise EtegrecError(f"config key 'optimizer' must be adamw or adamw8bit, got {kind!r}")
    # the fused kernel (CPU and CUDA) replaces ~10 small ops per parameter tensor per step: on a
    # small model the unfused step was ~12% of a training step on 2 cores
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fusable(params))


def _fusable(params):
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)


def lr_factor(kind, warmup_steps, total_steps) -> Callable[[int], float]:
    """Multiplier of the peak learning rate after ``step`` optimizer steps:
      constant      1 throughout
      inverse_sqrt  TIGER's: 1 for ``warmup_steps`` steps, then sqrt(warmup_steps / step)
      cosine        linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``
    """
    from recbole_etegrec.errors import EtegrecError

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


def warmup_steps_of(value, total_steps) -> int:
    """``warmup_steps`` as transformers reads it: an int is a step count, a float in (0, 1) a
    fraction of ``total_steps``."""
    if isinstance(value, float) and 0 < value < 1:
        return int(math.ceil(value * total_steps))
    return int(value)


class StepSchedule:
    """A LambdaLR stepped by a post-step hook of its optimizer, so it counts that optimizer's steps
    only (RecBole's loop calls ``optimizer.step()`` and nothing else). ``offset``: steps already
    taken (a resumed run continues its schedule)."""

    def __init__(self, optimizer, factor, offset=0):
        self.optimizer = optimizer
        self.scheduler = LambdaLR(optimizer, lambda step: factor(step + offset))
        self._hook = optimizer.register_step_post_hook(lambda *_: self.scheduler.step())

    def remove(self) -> None:
        self._hook.remove()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()
