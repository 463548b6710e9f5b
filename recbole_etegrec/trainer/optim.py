"""AdamW for the plugin trainers: bitsandbytes 8-bit AdamW when asked and available."""
from logging import getLogger

import torch


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
