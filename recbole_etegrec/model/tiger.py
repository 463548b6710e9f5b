"""TIGER: a T5 encoder-decoder that generates the next item's semantic ID.

Reference: Shashank Rajput et al. "Recommender Systems with Generative Retrieval." NeurIPS 2023.

Every item is 4 codes (3 RQ-VAE codes + a collision suffix) taken from the shared tokenizer and
kept FIXED: the RQ-VAE is pretrained (or loaded) once and only its code table is kept, no
tokenizer module. Vocabulary: pad 0, eos 1, code ``c`` of level ``l`` -> ``2 + l * code_num + c``.
The encoder reads the history's code tokens (+ eos); the decoder starts from pad (T5's
decoder_start) and emits the 4 target codes, each scored over its own level's ``code_num`` slice
of the vocabulary (so a step's log-probs index codes directly). Evaluation is the shared
trie-constrained beam search with T5's KV cache (``use_kv_cache: False`` re-runs the prefix).
"""
import inspect
from typing import Callable, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from transformers import T5Config, T5ForConditionalGeneration

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.model.code_model import CodeSequenceMixin
from recbole_etegrec.stages.item_tokenizer import item_tokenizer_of

PAD, EOS, N_SPECIAL = 0, 1, 2
# transformers >= 5 names the KV cache argument `cache`; 4.x calls it `past_key_values`
CACHE_ARG = ("cache" if "cache" in inspect.signature(T5ForConditionalGeneration.forward).parameters
             else "past_key_values")


class TIGER(CodeSequenceMixin, SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # parameters
        self.code_num, self.code_length = config["code_num"], config["code_length"]
        self.num_beams, self.chunk_size = config["num_beams"], config["generate_chunk_size"]
        self.use_kv_cache, self.append_eos = config["use_kv_cache"], config["append_eos"]
        # codes are fixed for TIGER: keep the tokenizer stage's code table, not the RQ-VAE itself
        self.code_table = item_tokenizer_of(dataset).code_table
        if self.code_table.code_num != self.code_num or self.code_table.code_length != self.code_length:
            raise EtegrecError(
                f"tokenizer code table has code_num {self.code_table.code_num}, code_length "
                f"{self.code_table.code_length} but the config says {self.code_num}, {self.code_length}: "
                "use the same tokenizer settings (or delete the stale tokenizer cache / tokenizer_path)")

        # layers
        t5_config = T5Config(
            vocab_size=N_SPECIAL + self.code_length * self.code_num,
            d_model=config["d_model"], d_kv=config["d_kv"], d_ff=config["d_ff"],
            num_layers=config["num_encoder_layers"], num_decoder_layers=config["num_decoder_layers"],
            num_heads=config["num_heads"], dropout_rate=config["dropout_rate"],
            feed_forward_proj=config["feed_forward_proj"],
            relative_attention_num_buckets=config["relative_attention_num_buckets"],
            pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, use_cache=False,
        )
        self.t5 = T5ForConditionalGeneration(t5_config)
        # token id of code 0 at each level; [code_length]
        self.register_buffer("level_offset", N_SPECIAL + torch.arange(self.code_length) * self.code_num,
                             persistent=False)

        # loss
        self.loss_fct = nn.CrossEntropyLoss()

        # init: T5's own initialisation (T5PreTrainedModel.post_init), nothing pretrained

    # -- tokens ----------------------------------------------------------------------------------
    def encoder_inputs(self, codes, attention) -> Tuple[torch.Tensor, torch.Tensor]:
        """History codes [B, T] (left-padded with whole items, -1 = padding) -> T5 token ids + mask."""
        levels = torch.arange(codes.shape[1], device=codes.device) % self.code_length
        tokens = torch.where(codes >= 0, codes + self.level_offset[levels], torch.full_like(codes, PAD))
        if self.append_eos:
            tokens = torch.cat([tokens, torch.full_like(tokens[:, :1], EOS)], dim=1)
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        return tokens, attention

    def level_logits(self, logits, levels) -> torch.Tensor:
        """Full-vocabulary logits [B, S, V] -> each position's level slice [B, S, code_num]."""
        index = self.level_offset[levels].unsqueeze(1) + torch.arange(self.code_num, device=logits.device)
        return logits.gather(2, index.unsqueeze(0).expand(logits.shape[0], -1, -1))

    # -- training ------------------------------------------------------------------------------
    def forward(self, codes, attention, target_codes) -> torch.Tensor:
        """Teacher-forced code logits [B, code_length, code_num] of ``target_codes`` [B, code_length]."""
        input_ids, mask = self.encoder_inputs(codes, attention)
        prefix = target_codes[:, :-1] + self.level_offset[:-1]
        decoder_input_ids = torch.cat([torch.full_like(prefix[:, :1], PAD), prefix], dim=1)
        logits = self.t5(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        return self.level_logits(logits, torch.arange(self.code_length, device=logits.device))

    def calculate_loss(self, interaction) -> torch.Tensor:
        codes, attention = self.history(interaction)
        target = interaction["target_codes"]
        logits = self.forward(codes, attention, target)
        return self.loss_fct(logits.reshape(-1, self.code_num), target.reshape(-1))

    # -- generation ----------------------------------------------------------------------------
    def decoder(self, codes, attention, use_cache=True) -> Tuple[Callable, Callable]:
        """The (start, step) decoder over a batch of histories (left-padded, history only): the
        encoder runs once here, the decoder steps reuse its output."""
        input_ids, mask = self.encoder_inputs(codes, attention)
        enc = self.t5.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return (self._cached_decoder if use_cache else self._uncached_decoder)(enc, mask)

    def _decode(self, enc, mask, decoder_input_ids, cache=None, use_cache=False):
        """One decoder pass; returns the level-free logits of the last position [N, V] and the cache."""
        out = self.t5(encoder_outputs=(enc,), attention_mask=mask, decoder_input_ids=decoder_input_ids,
                      use_cache=use_cache, **{CACHE_ARG: cache})
        return out.logits[:, -1], getattr(out, CACHE_ARG, None)

    def _log_probs(self, logits, level):
        start = int(self.level_offset[level])
        return F.log_softmax(logits[:, start:start + self.code_num].float(), dim=-1)

    def _code_tokens(self, codes, level):
        return (codes + self.level_offset[level]).unsqueeze(1)

    def _cached_decoder(self, enc, mask):
        """Incremental decoder: one new token per beam per step, the KV cache reordered by parents."""
        def start():
            bos = torch.full((enc.shape[0], 1), PAD, dtype=torch.long, device=enc.device)
            logits, cache = self._decode(enc, mask, bos, use_cache=True)
            return self._log_probs(logits, 0), (cache, enc, mask)

        def step(state, parents, new_codes, level):
            cache, enc_k, mask_k = state
            if parents is not None:  # None: the rows stay (beam_search.py)
                cache.reorder_cache(parents)  # B -> B*K rows at the first step, then beam reordering
                enc_k, mask_k = enc_k[parents], mask_k[parents]
            logits, cache = self._decode(enc_k, mask_k, self._code_tokens(new_codes, level - 1),
                                         cache=cache, use_cache=True)
            return self._log_probs(logits, level), (cache, enc_k, mask_k)

        return start, step

    def _uncached_decoder(self, enc, mask):
        """Reference decoder: re-runs the whole decoder prefix every step (for tests and timing)."""
        def start():
            ids = torch.full((enc.shape[0], 1), PAD, dtype=torch.long, device=enc.device)
            logits, _ = self._decode(enc, mask, ids)
            return self._log_probs(logits, 0), (ids, enc, mask)

        def step(state, parents, new_codes, level):
            ids, enc_k, mask_k = state
            if parents is not None:
                ids, enc_k, mask_k = ids[parents], enc_k[parents], mask_k[parents]
            ids = torch.cat([ids, self._code_tokens(new_codes, level - 1)], dim=1)
            logits, _ = self._decode(enc_k, mask_k, ids)
            return self._log_probs(logits, level), (ids, enc_k, mask_k)

        return start, step
