"""ETEGRec's alignment losses (paper eqs. for SIA and PSA)."""
import torch
import torch.nn.functional as F


def symmetric_kl(logits_a, logits_b):
    """SIA: per level, KL(p_a || p_b) + KL(p_b || p_a) of the code distributions, mean over levels."""
    total = 0.0
    for la, lb in zip(logits_a, logits_b):
        log_pa, log_pb = F.log_softmax(la, dim=-1), F.log_softmax(lb, dim=-1)
        total = total + F.kl_div(log_pb, log_pa, log_target=True, reduction="batchmean")
        total = total + F.kl_div(log_pa, log_pb, log_target=True, reduction="batchmean")
    return total / len(logits_a)


def symmetric_info_nce(a, b, tau):
    """PSA: in-batch InfoNCE over cosine similarities, both directions (a->b and b->a)."""
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2
