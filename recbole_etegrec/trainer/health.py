"""Tokenizer health figures of an ETEGRec model (logged after every tokenizer epoch).

``tokenizer_health(model)`` runs the RQ-VAE over every real item (``model.item_emb[1:]``) in eval
mode without gradients and returns

* ``recon``: reconstruction MSE of the items' embeddings;
* ``collision_rate``: share of items whose semantic codes (all levels) are shared with another;
* ``utilization``: per level, the fraction of the ``code_num`` codes some item uses;
* ``entropy``: per level, the mean entropy (nats) of the items' code distributions
  ``softmax(quant.logits[level])`` (0 = hard assignments, ``log(code_num)`` = uniform).

``items_recoded(old, new)`` is the share of items a tokenizer epoch moved to another code tuple
(what the recommender must re-learn); ``sia_gradient_ratio(model, interaction)`` probes, on one
training batch, how hard SIA pulls the codebooks compared with the quantization loss;
``guard_verdict`` is the rule that undoes a tokenizer epoch (``ETEGRecTrainer``).
"""
from typing import List, Optional

import torch
import torch.nn.functional as F


@torch.no_grad()
def tokenizer_health(model, batch_size=4096) -> dict:
    tokenizer, items = model.tokenizer, model.item_emb[1:]
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        sq_error, codes, entropy = 0.0, [], None
        for start in range(0, len(items), batch_size):
            x = items[start:start + batch_size]
            out = tokenizer(x)
            sq_error += float(F.mse_loss(out.recon, x, reduction="sum"))
            codes.append(out.quant.codes)
            level_h = torch.stack([torch.special.entr(F.softmax(lg.float(), -1)).sum()  # -p log p, 0 at p = 0
                                   for lg in out.quant.logits])
            entropy = level_h if entropy is None else entropy + level_h
    finally:
        tokenizer.train(was_training)
    n = len(items)
    codes = torch.cat(codes) if codes else items.new_zeros(0, tokenizer.quantizer.levels, dtype=torch.long)
    code_num = tokenizer.quantizer.code_num
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    return {
        "recon": sq_error / max(items.numel(), 1),
        "collision_rate": float((counts[inverse] > 1).float().mean()) if n else 0.0,
        "utilization": [len(torch.unique(codes[:, lv])) / code_num for lv in range(codes.shape[1])],
        "entropy": [float(h) / max(n, 1) for h in entropy] if entropy is not None else [],
    }


def items_recoded(old, new) -> float:
    """Share of real items (row 0 is padding) whose code tuple, suffix included, differs between two
    code tables [n_items, code_length]: the items whose generated codes a tokenizer epoch moved."""
    if len(old) <= 1:
        return 0.0
    return float((old[1:] != new[1:]).any(dim=1).float().mean())


def format_health(health) -> str:
    """One log line (with the SIA/VQ gradient ratio and the guard's verdict when present)."""
    util = ", ".join(f"{u:.3f}" for u in health["utilization"])
    ent = ", ".join(f"{h:.3f}" for h in health["entropy"])
    line = (f"tokenizer health: recon MSE {health['recon']:.4g}, collision rate {health['collision_rate']:.4f}, "
            f"utilization per level [{util}], code entropy per level [{ent}] nats")
    if "items_recoded" in health:
        line += f", items re-coded {health['items_recoded']:.4f}"
    if health.get("sia_vq_grad_ratio"):
        line += ", SIA/VQ gradient ratio per level [" + ", ".join(
            f"{r:.3g}" for r in health["sia_vq_grad_ratio"]) + "]"
    if health.get("undone"):
        line += f"; UNDONE ({health['undone']})"
    return line


def sia_gradient_ratio(model, interaction) -> List[float]:
    """Per level: the mean norm of the gradient of ``id_kl_loss * SIA`` on each codebook vector the
    batch's distinct targets use, over that of ``id_vq_loss * quantization loss`` (as in a
    tokenizer epoch). ~0: SIA barely moves the codes; >> 1: SIA, not reconstruction, places them."""
    books = [book.weight for book in model.tokenizer.quantizer.codebooks]
    phase = model.phase
    model.phase = "id"  # SIA's tokenizer-epoch weighting
    try:
        with torch.enable_grad():
            target, first = model.distinct_targets(interaction)  # as a tokenizer epoch sees the batch
            states = model.frozen_states(interaction)[first]
            sia = model.weights["id_kl_loss"] * model.sia_loss(states, torch.stack(target.quant.logits))
            vq = model.weights["id_vq_loss"] * target.quant.loss
            g_sia = torch.autograd.grad(sia, books, retain_graph=True, allow_unused=True)
            g_vq = torch.autograd.grad(vq, books, allow_unused=True)
    finally:
        model.phase = phase
    ratios = []
    for level, (gs, gv) in enumerate(zip(g_sia, g_vq)):
        used = torch.unique(target.quant.codes[:, level])
        num = gs[used].norm(dim=1).mean() if gs is not None else torch.tensor(0.0)
        den = gv[used].norm(dim=1).mean() if gv is not None else torch.tensor(0.0)
        ratios.append(float(num / den) if float(den) > 0 else float("inf"))
    return ratios


def guard_verdict(health, start, max_collision_rise, min_utilization) -> Optional[str]:
    """Why a tokenizer epoch must be undone, or None. ``start`` is the health of the tokenizer the
    run started from: collision may rise at most ``max_collision_rise`` above it, and no level's
    utilization may fall below ``min_utilization`` (or below the start's, where that was lower:
    a dataset with fewer items than codes starts below it)."""
    reasons = []
    if max_collision_rise is not None and health["collision_rate"] > start["collision_rate"] + max_collision_rise:
        reasons.append(f"collision rate {health['collision_rate']:.4f} > start {start['collision_rate']:.4f} "
                       f"+ {max_collision_rise}")
    if min_utilization is not None:
        for level, (now, then) in enumerate(zip(health["utilization"], start["utilization"])):
            floor = min(min_utilization, then)
            if now < floor:
                reasons.append(f"level {level} utilization {now:.3f} < {floor:.3f}")
    return "; ".join(reasons) or None
