"""ETEGRec's alignment losses (paper eqs. for SIA and PSA)."""
import torch
import torch.nn.functional as F


def symmetric_kl(logits_a, logits_b) -> torch.Tensor:
    """SIA: per level, KL(p_a || p_b) + KL(p_b || p_a) of the code distributions, mean over rows and
    levels. Logits are [levels, N, code_num] (or a list of per-level [N, code_num]). The two KLs sum
    to sum (p_a - p_b) * (log p_a - log p_b), one expression for all levels at once."""
    la, lb = (torch.stack(list(x)) if not torch.is_tensor(x) else x for x in (logits_a, logits_b))
    log_pa, log_pb = F.log_softmax(la, dim=-1), F.log_softmax(lb, dim=-1)
    return ((log_pa.exp() - log_pb.exp()) * (log_pa - log_pb)).sum() / (la.shape[0] * la.shape[1])


def symmetric_info_nce(a, b, tau) -> torch.Tensor:
    """PSA: in-batch InfoNCE over cosine similarities, summed over both directions (a->b and b->a),
    as the official code (not averaged: the weights ``*_dec_cl_loss`` are tuned for the sum)."""
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    labels = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)
