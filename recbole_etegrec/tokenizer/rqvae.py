"""RQ-VAE item tokenizer: MLP encoder -> residual quantizer (one codebook per level) -> MLP decoder.

The forward pass has no side effects (no EMA updates, no re-seeding): ETEGRec trains this module
jointly with its alignment losses, reads ``quant.logits`` / ``recon`` and copies the codebooks
to and from the recommender, so everything that changes state lives in explicit methods
(``kmeans_init``, ``reseed_dead_codes`` for the standalone pretraining, ``calibrate`` for SIA's
per-level temperature).

As the official ETEGRec/RQ-VAE code: the quantization loss is the mean over levels, and every
level after the first quantizes a detached residual, so only the first level's commitment (and
SIA's first-level term) moves the encoder; deeper levels train their own codebook only.
"""
from typing import List, NamedTuple, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # [N, e_dim] value = sum of chosen codebook vectors, gradient = identity to z
    codes: torch.Tensor  # LongTensor [N, levels], hard (argmin-distance) codes
    loss: torch.Tensor  # scalar: mean over levels of codebook + beta * commitment loss
    logits: List[torch.Tensor]  # per level [N, code_num]: ``soft_code_logits`` of the distances


class RQVAEOutput(NamedTuple):
    recon: torch.Tensor  # [N, in_dim] decoder output
    z: torch.Tensor  # [N, e_dim] encoder output (continuous latent)
    quant: QuantizerOutput
    recon_loss: torch.Tensor  # MSE(recon, x)
    loss: torch.Tensor  # recon_loss + quant.loss


def squared_distances(r, weight) -> torch.Tensor:
    """||r_i - e_k||^2 for all pairs, [N, K]; the expanded form keeps it one matmul."""
    return r.pow(2).sum(1, keepdim=True) - 2 * r @ weight.t() + weight.pow(2).sum(1).unsqueeze(0)


def soft_code_logits(dist, temperature, scale) -> torch.Tensor:
    """Logits of the soft code distribution (ETEGRec's SIA): -d / (temperature * scale), with one
    ``scale`` per level, shared by every row (items and sequence vectors alike): the mean squared
    item-to-code distance of that level (``ResidualQuantizer.calibrate``). One shared temperature
    keeps the two sides of SIA's KL comparable (a row's own mean would flatten whichever side sits
    at another scale), and dividing by the level's distance scale makes the distributions
    independent of the latent's scale (l2-normalised text latents have ~100x smaller squared
    distances than SASRec ones at the deepest level)."""
    return -dist / (temperature * scale)


class ResidualQuantizer(nn.Module):
    def __init__(self, levels, code_num, e_dim, beta=0.25, temperature=1.0):
        super().__init__()
        self.levels, self.code_num, self.e_dim = levels, code_num, e_dim
        self.beta, self.temperature = beta, temperature
        self.codebooks = nn.ModuleList([nn.Embedding(code_num, e_dim) for _ in range(levels)])
        for book in self.codebooks:
            # small init: before k-means every residual should be able to reach every code
            nn.init.uniform_(book.weight, -1.0 / code_num, 1.0 / code_num)
        # SIA's per-level distance scale; a function of the weights and the items, so not saved:
        # whoever reads ``logits`` calls ``calibrate`` first (ETEGRec at every phase change)
        self.register_buffer("scale", torch.ones(levels), persistent=False)

    def forward(self, z) -> QuantizerOutput:
        residual, total = z, torch.zeros_like(z)
        codes, logits, losses = [], [], []
        for level, book in enumerate(self.codebooks):
            dist = squared_distances(residual, book.weight)
            # soft distribution for ETEGRec's SIA: differentiable in the codebook and, at level 0, in z
            logits.append(soft_code_logits(dist, self.temperature, self.scale[level]))
            idx = dist.detach().argmin(dim=1)
            chosen = book(idx)
            # codebook term moves the code, commitment term moves the encoder; mean over elements
            # (as the official code's F.mse_loss) keeps the scale comparable to the recon MSE
            losses.append(F.mse_loss(chosen, residual.detach()) + self.beta * F.mse_loss(residual, chosen.detach()))
            codes.append(idx)
            total = total + chosen
            # next residual detached (the official straight-through residual): each codebook is
            # trained only by its own level, and deeper levels never push the encoder
            residual = (residual - chosen).detach()
        # straight-through: forward value is the code sum, the gradient reaches z unchanged
        quantized = z + (total - z).detach()
        return QuantizerOutput(quantized, torch.stack(codes, dim=1), torch.stack(losses).mean(), logits)

    def code_logits(self, z) -> torch.Tensor:
        """Only the per-level code logits of ``forward`` (the SIA input), stacked [levels, N, code_num]:
        the same residual path without the losses and the quantized sum, a third of the ops."""
        logits, residual = [], z
        for level, book in enumerate(self.codebooks):
            dist = squared_distances(residual, book.weight)
            logits.append(soft_code_logits(dist, self.temperature, self.scale[level]))
            residual = (residual - book.weight[dist.detach().argmin(dim=1)]).detach()
        return torch.stack(logits)

    @torch.no_grad()
    def calibrate(self, z) -> torch.Tensor:
        """Set ``scale`` to each level's mean squared distance from the residuals of ``z`` (all items)
        to every code of that level; returns it. Multiplying latents and codebooks by c multiplies
        it by c^2, exactly as the distances, so the code distributions do not change."""
        residuals, _ = self.residuals(z)
        scale = torch.stack([squared_distances(r, book.weight).mean() for r, book in zip(residuals, self.codebooks)])
        self.scale.copy_(scale.clamp_min(1e-12).to(self.scale))
        return self.scale.clone()

    @torch.no_grad()
    def residuals(self, z) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Per level, the residual that level quantizes and the hard codes: ([levels x [N, e]], [N, levels])."""
        out, codes, residual = [], [], z
        for book in self.codebooks:
            idx = squared_distances(residual, book.weight).argmin(dim=1)
            out.append(residual)
            codes.append(idx)
            residual = residual - book.weight[idx]
        return out, torch.stack(codes, dim=1)

    @torch.no_grad()
    def kmeans_init(self, z, seed=0, n_init=1, max_iter=100) -> None:
        """Set each level's codebook to k-means centres of that level's residuals (level by level)."""
        from sklearn.cluster import KMeans

        rng = np.random.default_rng(seed)
        residual = z.detach().float()
        for book in self.codebooks:
            data = residual.cpu().numpy().astype(np.float64)
            k = min(self.code_num, len(np.unique(data, axis=0)))
            km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(data)
            centres = km.cluster_centers_
            if k < self.code_num:
                # fewer distinct points than codes: pad with sampled points plus noise so rows differ
                extra = data[rng.integers(0, len(data), self.code_num - k)]
                scale = 1e-3 * (data.std() + 1e-8)
                centres = np.concatenate([centres, extra + rng.normal(0, scale, extra.shape)])
            book.weight.copy_(torch.as_tensor(centres, dtype=book.weight.dtype, device=book.weight.device))
            idx = squared_distances(residual, book.weight).argmin(dim=1)
            residual = residual - book.weight[idx]

    @torch.no_grad()
    def reseed_dead_codes(self, z, generator=None, noise=1e-3) -> List[int]:
        """Move every code no item in ``z`` uses onto a residual of that level; returns counts per level.

        Donor residuals come only from codes used by >= 2 items, so a re-seeded code never steals
        the last member of a live code (which would just create a new dead code) and crowded codes,
        the source of collisions, are the ones split.
        """
        reseeded, residual = [], z.detach()
        for book in self.codebooks:
            idx = squared_distances(residual, book.weight).argmin(dim=1)
            counts = torch.bincount(idx, minlength=self.code_num)
            dead = torch.nonzero(counts == 0).flatten()
            donors = []
            if len(dead):
                left, code_of = counts.tolist(), idx.tolist()  # plain lists: this loop is per item
                for item in torch.randperm(len(code_of), generator=generator).tolist():
                    if left[code_of[item]] > 1:
                        left[code_of[item]] -= 1
                        donors.append(item)
                        if len(donors) == len(dead):
                            break
                if donors:
                    scale = noise * (residual.std() + 1e-8)
                    jitter = torch.randn(len(donors), self.e_dim, generator=generator).to(residual) * scale
                    book.weight[dead[: len(donors)]] = residual[donors] + jitter.to(residual)
                idx = squared_distances(residual, book.weight).argmin(dim=1)
            reseeded.append(len(donors))
            residual = residual - book.weight[idx]
        return reseeded


def mlp(sizes, dropout) -> nn.Sequential:
    """Linear layers with ReLU (and dropout) between them, nothing after the last one."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, in_dim, hidden, e_dim, code_num, levels, dropout=0.0, beta=0.25, temperature=1.0):
        super().__init__()
        self.arch = dict(in_dim=in_dim, hidden=list(hidden), e_dim=e_dim, code_num=code_num, levels=levels,
                         dropout=dropout, beta=beta, temperature=temperature)
        sizes = [in_dim, *hidden, e_dim]
        self.encoder = mlp(sizes, dropout)
        self.decoder = mlp(sizes[::-1], dropout)
        self.quantizer = ResidualQuantizer(levels, code_num, e_dim, beta, temperature)

    @classmethod
    def from_config(cls, config, in_dim):
        return cls(
            in_dim=in_dim,
            hidden=list(config["rqvae_hidden"]),
            e_dim=config["e_dim"],
            code_num=config["code_num"],
            levels=config["code_length"] - 1,  # the last code is the collision suffix
            dropout=config["rqvae_dropout"],
            beta=config["rqvae_beta"],
            temperature=config["code_temperature"],
        )

    def encode(self, x) -> torch.Tensor:
        return self.encoder(x)

    @torch.no_grad()
    def calibrate(self, x) -> torch.Tensor:
        """SIA's per-level distance scale from the items ``x`` (eval mode: no dropout); returns it."""
        was_training = self.training
        self.eval()
        try:
            return self.quantizer.calibrate(self.encoder(x))
        finally:
            self.train(was_training)

    def forward(self, x) -> RQVAEOutput:
        z = self.encoder(x)
        quant = self.quantizer(z)
        recon = self.decoder(quant.quantized)
        recon_loss = F.mse_loss(recon, x)
        return RQVAEOutput(recon, z, quant, recon_loss, recon_loss + quant.loss)

    @torch.no_grad()
    def get_codes(self, x, batch_size=4096) -> torch.Tensor:
        """Hard codes [N, levels] in eval mode (dropout off); restores the previous mode."""
        was_training = self.training
        self.eval()
        try:
            codes = [self.quantizer.residuals(self.encoder(x[i:i + batch_size]))[1]
                     for i in range(0, len(x), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(codes) if codes else torch.zeros(0, self.quantizer.levels, dtype=torch.long)
