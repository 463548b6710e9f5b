"""The RQ-VAE pretraining loop (k-means init, dead-code re-seeding, the kept-epoch rule) and the
tokenizer statistics.

Optimisation follows the official ETEGRec RQ-VAE script: AdamW with weight decay, a linear
warm-up over ``rqvae_warmup_epochs`` then linear decay to 0, gradients clipped to norm 1.
Kept epoch: the lowest collision rate among the epochs whose reconstruction MSE is within
``rqvae_recon_tolerance`` (relative) of the best epoch's, ties by lower MSE. Collision alone picks
an early epoch whose decoder has not learnt the items yet (Scientific: ~40% of the variance);
reconstruction alone ignores what the recommender needs (distinct codes).

A library function: it reads settings from ``config`` (a RecBole Config) and knows nothing of
datasets or models; the item-tokenizer stage
(``recbole_etegrec.stages.item_tokenizer``) feeds it embeddings and caches its result.

    python -m recbole_etegrec.tokenizer.pretrain --dataset Instruments   # == recbole-etegrec tokenize

always retrains and writes the tokenizer cache; its last output line is
``collision_rate=<float> utilization=<l0>,<l1>,<l2> max_suffix=<int> explained_variance=<float>
kept_epoch=<int>``.
"""
import copy
import math
import sys
import time
from logging import getLogger
from typing import List, NamedTuple, Tuple

import torch

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.tokenizer.code_table import CodeTable, build_code_table
from recbole_etegrec.tokenizer.norm import check_finite
from recbole_etegrec.tokenizer.rqvae import RQVAE


def code_stats(codes, code_num) -> Tuple[float, int, List[float], List[float]]:
    """Collision rate, largest group, per-level utilisation and perplexity of codes [N, levels]."""
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    collision = float((counts[inverse] > 1).float().mean())
    util, ppl = [], []
    for level in range(codes.shape[1]):
        hist = torch.bincount(codes[:, level], minlength=code_num).float()
        p = hist / hist.sum()
        util.append(float((hist > 0).float().mean()))
        ppl.append(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())))
    return collision, int(counts.max()), util, ppl


class _Eval(NamedTuple):
    loss: float  # eval-mode RQ-VAE loss (reconstruction + quantisation), mean over items
    recon: float  # reconstruction MSE per element
    codes: torch.Tensor  # [N, levels] hard codes (exactly what ``get_codes`` returns)
    z: torch.Tensor  # [N, e_dim] encoder outputs


@torch.no_grad()
def _evaluate(model, x, batch_size=4096) -> _Eval:
    model.eval()
    total, sq_error, codes, zs = 0.0, 0.0, [], []
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        total += float(out.loss) * len(out.z)
        sq_error += float(out.recon_loss) * out.recon.numel()
        codes.append(out.quant.codes)
        zs.append(out.z)
    model.train()
    return _Eval(total / len(x), sq_error / x.numel(), torch.cat(codes), torch.cat(zs))


def explained_variance(recon_mse, x) -> float:
    """1 - reconstruction MSE / total variance of the items (per element): 1 = perfect, 0 = the mean."""
    variance = float(x.var(dim=0, unbiased=False).mean())
    return 1.0 - recon_mse / variance if variance > 0 else 0.0


def kept_epoch(candidates, tolerance) -> dict:
    """The checkpoint rule over per-epoch dicts with ``recon`` and ``collision_rate``."""
    floor = min(c["recon"] for c in candidates) * (1.0 + tolerance)
    within = [c for c in candidates if c["recon"] <= floor]
    return min(within, key=lambda c: (c["collision_rate"], c["recon"]))


def _pareto_add(front, cand):
    """Keep only epochs no other epoch beats on both recon and collision: the rule's answer is
    always among them, whatever the final best recon is, without storing every epoch's weights."""
    if any(f["recon"] <= cand["recon"] and f["collision_rate"] <= cand["collision_rate"] for f in front):
        return front
    return [f for f in front if not (cand["recon"] <= f["recon"] and cand["collision_rate"] <= f["collision_rate"])] \
        + [cand]


def _lr_lambda(warmup_steps, total_steps):
    def factor(step):  # linear warm-up, then linear decay to 0 (transformers' linear schedule)
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def _device(config):
    device = config["device"]
    return device if isinstance(device, torch.device) else torch.device("cpu")


def pretrain_rqvae(config, embeddings, logger=None) -> Tuple[RQVAE, CodeTable, dict]:
    """Train an RQ-VAE on ``embeddings`` [item_num, d] (row 0 = padding, skipped; pass them already
    normalised). Returns (rqvae on CPU, CodeTable, stats) for the epoch the checkpoint rule keeps
    (module docstring)."""
    from tqdm import tqdm

    logger = logger or getLogger()
    start = time.time()
    device = _device(config)
    x = embeddings[1:].float().to(device)
    if len(x) == 0:
        raise EtegrecError("no items to tokenize: the dataset has no real items")
    check_finite(x, "the item embeddings")
    _check_distinct(x, config["code_num"])
    code_num, seed = config["code_num"], config["seed"]
    epochs, batch_size = config["rqvae_epochs"], config["rqvae_batch_size"]
    # fork the RNG: pretraining inside a model's __init__ must not shift the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = RQVAE.from_config(config, x.shape[1]).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=config["rqvae_lr"],
                                weight_decay=config["rqvae_weight_decay"])
        # plain autoencoder warm-up: the latent reaches its working scale before k-means places the
        # codebooks on it (k-means on a random encoder's tiny outputs leaves most codes stranded)
        for _ in range(config["rqvae_ae_warmup"]):
            perm = torch.randperm(len(x), generator=gen).to(device)
            for i in range(0, len(x), batch_size):
                xb = x[perm[i:i + batch_size]]
                loss = torch.nn.functional.mse_loss(model.decoder(model.encoder(xb)), xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if config["rqvae_kmeans_init"]:
            model.quantizer.kmeans_init(_evaluate(model, x).z, seed=seed)
        initial = _evaluate(model, x)
        # the schedule covers the quantised epochs (the autoencoder warm-up above runs at rqvae_lr)
        steps_per_epoch = math.ceil(len(x) / batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, _lr_lambda(config["rqvae_warmup_epochs"] * steps_per_epoch, epochs * steps_per_epoch))
        # no re-seeding in the last ~10% of epochs: the kept codebooks must have settled after it
        reseed_until = int(epochs * 0.9) if config["rqvae_reseed_dead"] else 0
        front = []
        bar = tqdm(range(epochs), desc="RQ-VAE", ncols=100, disable=not bool(config["show_progress"]))
        for epoch in bar:
            model.train()
            perm = torch.randperm(len(x), generator=gen).to(device)
            for i in range(0, len(x), batch_size):
                loss = model(x[perm[i:i + batch_size]]).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                schedule.step()
            ev = _evaluate(model, x)
            if not math.isfinite(ev.loss):
                raise EtegrecError(f"RQ-VAE loss became {ev.loss} at epoch {epoch} (rqvae_lr={config['rqvae_lr']}): "
                                   "lower rqvae_lr or check the item embeddings")
            collision, largest, util, ppl = code_stats(ev.codes, code_num)
            cand = dict(epoch=epoch, loss=ev.loss, recon=ev.recon, collision_rate=collision, utilization=util,
                        perplexity=ppl, largest_group=largest)
            front = _pareto_add(front, cand)
            if any(f is cand for f in front):  # on the front: its weights may be the ones kept
                cand["state"] = copy.deepcopy(model.state_dict())
            reseeded = model.quantizer.reseed_dead_codes(ev.z, generator=gen) if epoch < reseed_until else []
            bar.set_postfix(loss=f"{ev.loss:.4f}", coll=f"{collision:.4f}")
            logger.info(
                f"rqvae epoch {epoch}: loss {ev.loss:.5f} recon {ev.recon:.5f} collision {collision:.4f} util "
                f"{','.join(f'{u:.3f}' for u in util)} ppl {','.join(f'{p:.1f}' for p in ppl)}"
                + (f" reseeded {reseeded}" if any(reseeded) else "")
            )
    best = dict(kept_epoch(front, config["rqvae_recon_tolerance"]))
    model.load_state_dict(best.pop("state"))
    model = model.cpu().eval()
    table = build_code_table(model.get_codes(x.cpu()), code_num)  # raises if a group exceeds code_num
    stats = dict(collision_rate=table.collision_rate(), utilization=best["utilization"],
                 perplexity=best["perplexity"], max_suffix=table.max_suffix, epochs=epochs,
                 best_epoch=best["epoch"], loss=best["loss"], initial_loss=initial.loss, recon=best["recon"],
                 initial_recon=initial.recon,
                 explained_variance=explained_variance(best["recon"], x),
                 best_recon=min(c["recon"] for c in front),
                 seconds=time.time() - start, n_items=len(x))
    logger.info(f"rqvae: kept epoch {best['epoch']}: " + format_stats(stats))
    return model, table, stats


def _check_distinct(x, code_num):
    """Items with identical embeddings get identical semantic codes whatever the RQ-VAE learns; more
    than ``code_num`` of them cannot be told apart by the suffix code: a data problem, not training."""
    _, counts = torch.unique(x, dim=0, return_counts=True)
    if int(counts.max()) > code_num:
        raise EtegrecError(f"{int(counts.max())} items share one identical embedding (more than code_num={code_num}): "
                           "the item embeddings are degenerate; check item_emb_file / item_emb_source")


def format_stats(stats) -> str:
    util = ",".join(f"{u:.4f}" for u in stats["utilization"])
    line = f"collision_rate={stats['collision_rate']:.6f} utilization={util} max_suffix={stats['max_suffix']}"
    if "explained_variance" in stats:  # caches written before the checkpoint rule lack it
        line += f" explained_variance={stats['explained_variance']:.4f} kept_epoch={stats['best_epoch']}"
    return line


if __name__ == "__main__":  # the command: recbole_etegrec.commands.tokenize
    from recbole_etegrec.commands.tokenize import main

    sys.exit(main(prog="python -m recbole_etegrec.tokenizer.pretrain"))
