"""ETEGRec's alignment losses (paper eqs. for SIA and PSA)."""
import torch
import torch.nn.functional as F


def symmetric_kl(logits_a, logits_b, level_weights=None) -> torch.Tensor:
    """SIA: per level, KL(p_a || p_b) + KL(p_b || p_a) of the code distributions, mean over rows and
    levels (``level_weights`` [levels] multiply each level's term first). Logits are
    [levels, N, code_num] (or a list of per-level [N, code_num]). The two KLs sum to
    sum (p_a - p_b) * (log p_a - log p_b)."""
    la, lb = (torch.stack(list(x)) if not torch.is_tensor(x) else x for x in (logits_a, logits_b))
    log_pa, log_pb = F.log_softmax(la, dim=-1), F.log_softmax(lb, dim=-1)
    per_level = ((log_pa.exp() - log_pb.exp()) * (log_pa - log_pb)).sum(dim=(1, 2)) / max(la.shape[1], 1)
    if level_weights is not None:
        per_level = per_level * level_weights.to(per_level)
    return per_level.mean()


def symmetric_info_nce(a, b, tau) -> torch.Tensor:
    """PSA: in-batch InfoNCE over cosine similarities, summed over both directions (a->b and b->a),
    as the official code (not averaged: the weights ``*_dec_cl_loss`` are tuned for the sum)."""
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    labels = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)
