"""Item-embedding normalisation before the RQ-VAE (statistics fitted on the real items)."""
from typing import Optional

import torch

from recbole_etegrec.errors import EtegrecError

NORM_KINDS = ("standard", "l2", "none")


def fit_norm(embeddings: torch.Tensor, kind: str) -> Optional[dict]:
    """Normalisation statistics from the real items (rows 1..); None for 'none'."""
    if kind not in NORM_KINDS:
        raise EtegrecError(f"rqvae_emb_norm '{kind}' is unknown: use one of {', '.join(NORM_KINDS)}")
    if kind == "none":
        return None
    if kind == "l2":
        return {"kind": "l2"}
    real = embeddings[1:].float()
    return {"kind": "standard", "mean": real.mean(0), "std": real.std(0).clamp(min=1e-6)}


def apply_norm(emb: torch.Tensor, norm: Optional[dict]) -> torch.Tensor:
    """Normalised copy of ``emb``; rows that are all zero (the padding row) stay zero."""
    emb = emb.float()
    if norm is None:
        return emb.clone()
    pad = emb.abs().sum(1, keepdim=True) == 0
    if norm["kind"] == "l2":
        out = torch.nn.functional.normalize(emb, dim=1)
    else:
        out = (emb - norm["mean"].to(emb)) / norm["std"].to(emb)
    return out.masked_fill(pad, 0.0)


def check_finite(emb: torch.Tensor, where: str) -> torch.Tensor:
    """NaN/inf embeddings break k-means and the RQ-VAE with an unrelated error: stop here."""
    bad = ~torch.isfinite(emb).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:3].tolist()
        raise EtegrecError(f"item embeddings from '{where}' hold NaN/inf in {int(bad.sum())} rows (e.g. rows "
                           f"{rows}): fix or regenerate the embeddings; every value must be finite")
    return emb
