"""The LLaMA backbone: a local Hugging Face checkpoint (``llama_path``) or a from-scratch config
(``llama_config``), with optional dropout, LoRA (peft) and non-reentrant gradient checkpointing.

Only ``inputs_embeds`` are ever fed (items enter through the SoftEmbedding), so the token
embedding table is frozen and, for from-scratch models, shrunk to a 2-row stub.
"""
import inspect
from logging import getLogger
from typing import TYPE_CHECKING, Any, Tuple

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaModel

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.validation import check_llama_path

if TYPE_CHECKING:
    from peft import LoraConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# transformers >= 5 names the KV cache argument `cache`; 4.x calls it `past_key_values`
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def build_lora_config(config) -> "LoraConfig":
    """The one place LoRA is configured (peft is imported lazily: ~10 s on CPU)."""
    from peft import LoraConfig

    return LoraConfig(
        r=config["lora_r"],
        lora_alpha=config["lora_alpha"],
        lora_dropout=config["lora_dropout"],
        target_modules=list(config["lora_target_modules"]),
        bias="none",
    )


def add_dropout(model, p) -> None:
    """Dropout ``p`` on the attention probabilities and on each layer's attention and MLP outputs
    before they join the residual stream, where T5 and GPT put it. Hugging Face's LLaMA has none
    (it was written for pretrained weights), while the official ETEGRec's T5 trains with 0.1: a
    from-scratch model on sparse Amazon histories otherwise overfits within a few dozen epochs."""
    if p <= 0:
        return

    def hook(module, args, output):
        if not module.training:
            return None
        if isinstance(output, tuple):  # self_attn: (output, weights)
            return (F.dropout(output[0], p, True),) + tuple(output[1:])
        return F.dropout(output, p, True)

    model.config.attention_dropout = p
    for layer in model.layers:
        layer.self_attn.attention_dropout = p  # each attention module copied the config's value
        layer.self_attn.register_forward_hook(hook)
        layer.mlp.register_forward_hook(hook)


def build_llama(config) -> torch.nn.Module:
    dtype = DTYPES.get(config["precision"])
    if dtype is None:
        raise EtegrecError(f"config key 'precision' must be one of {sorted(DTYPES)}, got {config['precision']!r}")
    path = config["llama_path"]
    if path:
        check_llama_path(path)  # another family would load as random LLaMA weights, one warning only
        model = LlamaModel.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                           local_files_only=True)
    else:
        spec = dict(config["llama_config"] or {})
        if not spec:
            raise EtegrecError("set either llama_path (a local checkpoint) or llama_config (a size)")
        cfg = LlamaConfig(vocab_size=2, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                          max_position_embeddings=spec.pop("max_position_embeddings", 1024), **spec)
        cfg._attn_implementation = "sdpa"
        model = LlamaModel(cfg).to(dtype)
    model.embed_tokens.weight.requires_grad_(False)
    add_dropout(model, config["dropout_rate"] or 0.0)  # None: a checkpoint from before the key
    if config["lora"]:
        from peft import get_peft_model

        model = get_peft_model(model, build_lora_config(config))
    if config["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    getLogger().info(f"LLaMA backbone: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable, "
                     f"{config['precision']}, lora={bool(config['lora'])}")
    return model


def run_backbone(backbone, embeds, attention_mask, position_ids, cache=None,
                 use_cache=False) -> Tuple[torch.Tensor, Any]:
    """One forward of the backbone; returns (last hidden states, cache)."""
    out = backbone(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=use_cache, **{CACHE_ARG: cache})
    return out.last_hidden_state, getattr(out, CACHE_ARG, None)
