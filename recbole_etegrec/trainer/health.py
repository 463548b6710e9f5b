"""Tokenizer health figures of an ETEGRec model (logged after every tokenizer epoch).

``tokenizer_health(model)`` runs the RQ-VAE over every real item (``model.item_emb[1:]``) in eval
mode without gradients and returns

* ``recon``: reconstruction MSE of the items' embeddings;
* ``collision_rate``: share of items whose semantic codes (all levels) are shared with another;
* ``utilization``: per level, the fraction of the ``code_num`` codes some item uses;
* ``entropy``: per level, the mean entropy (nats) of the items' code distributions
  ``softmax(quant.logits[level])`` (0 = hard assignments, ``log(code_num)`` = uniform).
"""
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


def format_health(health) -> str:
    """One log line."""
    util = ", ".join(f"{u:.3f}" for u in health["utilization"])
    ent = ", ".join(f"{h:.3f}" for h in health["entropy"])
    return (f"tokenizer health: recon MSE {health['recon']:.4g}, collision rate {health['collision_rate']:.4f}, "
            f"utilization per level [{util}], code entropy per level [{ent}] nats")
