"""ETEGRec with a decoder-only LLaMA backbone.

Reference: Enze Liu et al. "Generative Recommender with End-to-End Learnable Item Tokenization."
SIGIR 2025 (arXiv 2409.05546). The paper's T5 is replaced by LLaMA as specified in
``ETEGRec-LLaMA-design.zh.md``: SoftEmbedding over the codebooks, weight-tied output, last-token
sequence representation, the causal position fix, codebook copy + sync, KV-cached beam search.

Every item is 4 codes: 3 from the RQ-VAE tokenizer (``self.tokenizer``) and a collision suffix.
The recommender reads and writes codes through its *own copy* of the tokenizer's codebooks
(``self.codebooks``): DDP cannot share one parameter between two modules trained in alternation,
so the trainer copies them across at every phase change (``sync_codebooks``).
"""
import copy
from typing import Callable, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_etegrec.model.backbone import build_llama, run_backbone
from recbole_etegrec.model.code_model import CodeSequenceMixin
from recbole_etegrec.model.losses import symmetric_info_nce, symmetric_kl
from recbole_etegrec.stages.item_tokenizer import item_tokenizer_of
from recbole_etegrec.tokenizer import CodeTable, build_code_table
from recbole_etegrec.tokenizer.rqvae import RQVAEOutput, mlp


def first_occurrences(items) -> torch.Tensor:
    """Index of the first row of every distinct value of ``items`` [N], in ascending item order."""
    unique, inverse = torch.unique(items, return_inverse=True)
    rows = torch.arange(len(items), device=items.device)
    return torch.full_like(unique, len(items)).scatter_reduce_(0, inverse, rows, "amin")


class ETEGRec(CodeSequenceMixin, SequentialRecommender):
    input_type = InputType.POINTWISE
    train_modes = ("sequence", "prefix")  # the decoder-only model can supervise every next item

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # parameters
        self.code_num, self.code_length, self.e_dim = config["code_num"], config["code_length"], config["e_dim"]
        self.levels = self.code_length - 1
        self.num_beams, self.chunk_size = config["num_beams"], config["generate_chunk_size"]
        self.tau, self.lora, self.use_kv_cache = config["tau"], config["lora"], config["use_kv_cache"]
        self.weights = {k: config[k] for k in (
            "id_vq_loss", "id_kl_loss", "id_dec_cl_loss", "rec_code_loss", "rec_kl_loss", "rec_dec_cl_loss")}
        self.phase, self.align = "rec", True
        self._item_semantics = None  # cached tokenizer outputs while the tokenizer is frozen

        # tokenizer: the stage's pretrained RQ-VAE (trained further in the trainer's tokenizer epochs);
        # a copy, so the stage's bundle stays the pretrained one whatever this model trains
        bundle = item_tokenizer_of(dataset)
        self.tokenizer = copy.deepcopy(bundle.rqvae)
        self.tokenizer.quantizer.temperature = config["code_temperature"]  # SIA's, even for a tokenizer_path
        self.register_buffer("item_emb", bundle.item_emb.float(), persistent=False)
        self.code_table = bundle.code_table
        self.tokenizer.calibrate(self.item_emb[1:])  # SIA's per-level temperature, from the items

        # layers
        self.backbone = build_llama(config)
        hidden = self.backbone.config.hidden_size
        self.backbone_dtype = next(self.backbone.parameters()).dtype
        self.codebooks = nn.ModuleList(nn.Embedding(self.code_num, self.e_dim) for _ in range(self.levels))
        self.suffix_embedding = nn.Embedding(self.code_num, self.e_dim)
        self.scid_projector = mlp([self.e_dim, hidden, hidden], 0.0)
        # the backbone's own: build_llama; checkpoints from before the key trained without dropout
        self.input_dropout = nn.Dropout(config["dropout_rate"] or 0.0)
        self.output_projector = mlp([hidden, hidden, self.e_dim], 0.0)
        self.enc_adapter = mlp([hidden, hidden, self.e_dim], 0.0)  # -> RQ-VAE latent space (SIA)
        self.dec_adapter = mlp([hidden, hidden, self.item_emb.shape[1]], 0.0)  # -> item space (PSA)

        # init: start from the tokenizer's codebooks
        nn.init.normal_(self.suffix_embedding.weight, std=0.02)
        self.sync_codebooks("to_rec")

    # -- codebooks and code table ------------------------------------------------------------
    @torch.no_grad()
    def sync_codebooks(self, direction) -> None:
        """Copy codebooks tokenizer -> recommender (``to_rec``) or recommender -> tokenizer."""
        for own, tok in zip(self.codebooks, self.tokenizer.quantizer.codebooks):
            src, dst = (tok, own) if direction == "to_rec" else (own, tok)
            dst.weight.copy_(src.weight)

    @torch.no_grad()
    def retokenize(self) -> CodeTable:
        """Re-assign every item's codes with the current tokenizer; returns the new CodeTable."""
        semantic = self.tokenizer.get_codes(self.item_emb[1:])
        self.code_table = build_code_table(semantic, self.code_num)
        return self.code_table

    @torch.no_grad()
    def tokenizer_state(self) -> dict:
        """What a tokenizer epoch changes (tokenizer weights, code table), for ``restore_tokenizer``."""
        return {"weights": copy.deepcopy(self.tokenizer.state_dict()), "code_table": self.code_table}

    @torch.no_grad()
    def restore_tokenizer(self, state) -> None:
        """Undo a tokenizer epoch: weights, code table, the recommender's codebook copy, SIA's scale."""
        self.tokenizer.load_state_dict(state["weights"])
        self.code_table = state["code_table"]
        self.sync_codebooks("to_rec")
        self.tokenizer.calibrate(self.item_emb[1:])

    def set_phase(self, phase, align) -> None:
        """``rec``: train the recommender, tokenizer frozen; ``id``: train the tokenizer only."""
        self.phase, self.align = phase, align
        self._item_semantics = None
        self.tokenizer.calibrate(self.item_emb[1:])  # the tokenizer may have changed since the last phase
        for name, param in self.named_parameters():
            if name.startswith("tokenizer."):
                param.requires_grad_(phase == "id")
            elif name.startswith("backbone."):
                param.requires_grad_(phase == "rec" and self._backbone_trainable(name))
            else:
                param.requires_grad_(phase == "rec")

    def _backbone_trainable(self, name):
        if "embed_tokens" in name:
            return False
        return "lora_" in name if self.lora else True

    def recommender_parameters(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("tokenizer.")
                and (not n.startswith("backbone.") or self._backbone_trainable(n))]

    def recommender_parameter_groups(self, lr_codebook) -> List[dict]:
        """Optimizer groups for recommender epochs: the codebook copy gets its own learning rate.
        Its vectors are the tokenizer's (deeper levels have norms ~0.1 on l2-normalised items),
        and Adam's steps do not scale with them, so the recommender's lr would move them across
        the residual space and, once synced back, collapse items onto the same codes."""
        codebook = list(self.codebooks.parameters())
        ids = {id(p) for p in codebook}
        rest = [p for p in self.recommender_parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": codebook, "lr": lr_codebook}]

    # -- forward -----------------------------------------------------------------------------
    def embed_codes(self, codes, levels) -> torch.Tensor:
        """SoftEmbedding: code -> its level's codebook vector -> scid_projector (-> dropout while
        training). -1 = padding."""
        tables = torch.cat([cb.weight for cb in self.codebooks] + [self.suffix_embedding.weight])
        index = levels * self.code_num + codes.clamp(min=0)
        vectors = F.embedding(index, tables) * (codes >= 0).unsqueeze(-1)
        return self.input_dropout(self.scid_projector(vectors)).to(self.backbone_dtype)

    def code_logits(self, hidden, level) -> torch.Tensor:
        """Weight tying: output_projector(h) . codebook_level^T (suffix level: suffix table)."""
        return self.output_projector(hidden.float()) @ self.level_table(level).T

    def level_table(self, level) -> torch.Tensor:
        """Output (and input) vectors of one code level: a codebook copy, or the suffix table."""
        return self.codebooks[level].weight if level < self.levels else self.suffix_embedding.weight

    def encode(self, codes, attention) -> torch.Tensor:
        """Run the backbone over left-padded code sequences; returns hidden states [B, T, H]."""
        return self._run(codes, attention)[0]

    def _run(self, codes, attention, use_cache=False):
        """(hidden [B, T, H], KV cache or None, position ids [B, T]); positions count real tokens
        only, so every left-padded sequence starts at position 0."""
        levels = torch.arange(codes.shape[1], device=codes.device) % self.code_length
        embeds = self.embed_codes(codes, levels.expand_as(codes))
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        hidden, cache = run_backbone(self.backbone, embeds, attention, position_ids, use_cache=use_cache)
        return hidden, cache, position_ids

    def forward(self, interaction) -> torch.Tensor:
        """Hidden states [B, T, H] of the code rows (history + target; causal, so a state never sees
        the codes after it)."""
        return self.encode(interaction["code_input"], interaction["code_attention"])

    def boundary_states(self, hidden, interaction) -> Tuple[torch.Tensor, torch.Tensor]:
        """The supervised boundaries of a batch: states [N, H] at the last code of each history so
        far (position 4k + 3 for boundary k) and the items [N] they predict."""
        mask = interaction["boundary_mask"]
        positions = torch.arange(mask.shape[1], device=hidden.device) * self.code_length + self.code_length - 1
        return hidden[:, positions][mask].float(), interaction["boundary_items"][mask]

    def calculate_loss(self, interaction) -> Tuple[torch.Tensor, ...]:
        """Recommender epochs: code loss (+ SIA, PSA); tokenizer epochs: RQ-VAE loss (+ SIA, PSA).
        The main term covers all supervised boundaries of the batch (one per row in ``prefix``
        mode, every next item of the row in ``sequence`` mode); SIA and PSA one boundary per
        distinct target item (its first), as the official code: a popular item repeated in the
        batch would otherwise be its own in-batch negative in PSA and weigh several times in SIA."""
        w = self.weights
        if self.phase == "rec":
            hidden = self.forward(interaction)
            main, w_kl, w_cl = (w["rec_code_loss"] * self.code_loss(hidden, interaction), w["rec_kl_loss"],
                                w["rec_dec_cl_loss"])
            if not self.align:
                return (main,)
            states, items = self.boundary_states(hidden, interaction)
            first = first_occurrences(items)
            states = states[first]
            target_logits, target_recon = self.frozen_item_semantics(items[first])
        else:
            target, first = self.distinct_targets(interaction)
            main, w_kl, w_cl = w["id_vq_loss"] * target.loss, w["id_kl_loss"], w["id_dec_cl_loss"]
            if not self.align:
                return (main,)
            states = self.frozen_states(interaction)[first]
            target_logits, target_recon = torch.stack(target.quant.logits), target.recon
        return (main, w_kl * self.sia_loss(states, target_logits),
                w_cl * symmetric_info_nce(self.dec_adapter(states), target_recon, self.tau))  # PSA

    def distinct_targets(self, interaction) -> Tuple[RQVAEOutput, torch.Tensor]:
        """Tokenizer epochs: the RQ-VAE over the batch's distinct target items (with gradients) and
        the index of each one's first boundary. The official code quantizes the distinct targets: a
        popular item repeated in the batch would otherwise pull the codebooks several times."""
        items = interaction["boundary_items"][interaction["boundary_mask"]]
        first = first_occurrences(items)
        return self.tokenizer(self.item_emb[items[first]]), first

    @torch.no_grad()
    def frozen_states(self, interaction) -> torch.Tensor:
        """Tokenizer epochs: the states at every supervised boundary; the recommender is frozen, and
        runs without dropout, so the tokenizer aligns to the states the recommender ranks with."""
        modules = [m for m in (self.backbone, self.input_dropout) if m.training]
        for module in modules:
            module.eval()
        try:
            return self.boundary_states(self.forward(interaction), interaction)[0]
        finally:
            for module in modules:
                module.train()

    def sia_loss(self, states, target_logits) -> torch.Tensor:
        """SIA: the sequence's code distributions (its state through ``enc_adapter`` and the
        tokenizer's quantizer) vs the target items', both at each level's shared temperature. In
        tokenizer epochs each level's KL is weighted by that level's squared distance per latent
        coordinate (``scale / e_dim``), the units of the quantization loss it competes with (a
        mean squared error per coordinate), so SIA's pull on the codebooks relative to it does not
        depend on the latent's scale or width. Unweighted, SIA's gradient grows as 1 / scale:
        7x-97x the quantization gradient on l2-normalised text latents, which collapsed the codes;
        weighted by ``scale`` alone it was still 0.8-6.5x on ml-100k and emptied 14-88% of level 0.
        In recommender epochs SIA competes with the code cross-entropy, in nats: no weight."""
        quantizer = self.tokenizer.quantizer
        weights = quantizer.scale / self.e_dim if self.phase == "id" else None
        return symmetric_kl(quantizer.code_logits(self.enc_adapter(states)), target_logits, weights)

    def frozen_item_semantics(self, items) -> Tuple[torch.Tensor, torch.Tensor]:
        """The tokenizer's per-level code logits and reconstruction of ``items``. In recommender
        epochs the tokenizer is frozen, so they are computed once for all items per phase
        (``set_phase`` forgets them) instead of once per supervised boundary."""
        if self._item_semantics is None:
            with torch.no_grad():
                out = self.tokenizer(self.item_emb)
            self._item_semantics = (torch.stack(out.quant.logits), out.recon)
        logits, recon = self._item_semantics
        return logits[:, items], recon[items]

    def code_loss(self, hidden, interaction) -> torch.Tensor:
        """Mean cross-entropy over every supervised target code. Causal fix: the code at position q
        is predicted from the state at q - 1, so an item's first code comes from the last code of
        the item before it. The states at positions 4k + 3 .. 4k + 6 predict the 4 codes of slot
        k + 1, so they group per boundary as [B, L, 4, H]; one batched matmul over the levels scores
        them all (per-level indexing costs more than the products on small models)."""
        codes, n, mask = interaction["code_input"], self.code_length, interaction["boundary_mask"]
        batch, slots = mask.shape
        query = self.output_projector(hidden[:, n - 1:-1].reshape(batch, slots, n, -1)[mask].float())  # [N, n, e]
        targets = codes[:, n:].reshape(batch, slots, n)[mask]  # [N, n]
        tables = torch.stack([self.level_table(level) for level in range(n)])  # [n, code_num, e]
        logits = torch.bmm(query.transpose(0, 1), tables.transpose(1, 2))  # [n, N, code_num]
        if targets.numel() == 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.T.reshape(-1))

    # -- generation --------------------------------------------------------------------------
    def decoder(self, codes, attention, use_cache=True) -> Tuple[Callable, Callable]:
        """The (start, step) decoder over a batch of histories (left-padded, history only)."""
        return (self._cached_decoder if use_cache else self._uncached_decoder)(codes, attention)

    def _cached_decoder(self, codes, attention):
        def start():
            hidden, cache, position_ids = self._run(codes, attention, use_cache=True)
            logp = F.log_softmax(self.code_logits(hidden[:, -1], 0), -1)
            return logp, (cache, attention, position_ids[:, -1] + 1)

        def step(state, parents, new_codes, level):
            cache, mask, next_pos = state
            if parents is not None:  # None: the rows stay (beam_search.py)
                cache.reorder_cache(parents)
                mask, next_pos = mask[parents], next_pos[parents]
            levels = torch.full_like(new_codes, level - 1)
            embeds = self.embed_codes(new_codes, levels).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            hidden, cache = run_backbone(self.backbone, embeds, mask, next_pos.unsqueeze(1),
                                         cache=cache, use_cache=True)
            logp = F.log_softmax(self.code_logits(hidden[:, -1], level), -1)
            return logp, (cache, mask, next_pos + 1)

        return start, step

    def _uncached_decoder(self, codes, attention):
        """Reference decoder: re-runs the whole sequence every step (for tests and timing)."""
        def start():
            hidden = self.encode(codes, attention)
            return F.log_softmax(self.code_logits(hidden[:, -1], 0), -1), (codes, attention)

        def step(state, parents, new_codes, level):
            seq, mask = state
            if parents is not None:
                seq, mask = seq[parents], mask[parents]
            seq = torch.cat([seq, new_codes.unsqueeze(1)], dim=1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            hidden = self.encode(seq, mask)
            return F.log_softmax(self.code_logits(hidden[:, -1], level), -1), (seq, mask)

        return start, step
