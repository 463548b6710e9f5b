"""The LLaMA backbone as production loads it: a local checkpoint, LoRA, gradient checkpointing,
8-bit AdamW (or its logged fallback), and a clear error for a missing checkpoint."""
import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.model.backbone import build_llama, run_backbone
from recbole_etegrec.trainer.optim import build_adamw
from tests.conftest import TINY_LLAMA

BASE = {"precision": "fp32", "llama_path": None, "llama_config": None, "lora": False, "gradient_checkpointing": False,
        "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "dropout_rate": 0.0,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny LLaMA saved the way Hugging Face checkpoints are (config.json + safetensors)."""
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=8, **TINY_LLAMA)).save_pretrained(path)
    return str(path)


def test_dropout_acts_in_training_only_and_at_every_layer_output():
    """dropout_rate reaches the attention probabilities and each layer's attention and MLP outputs
    while training; evaluation (beam search, scoring) is deterministic and equals the no-dropout model."""
    torch.manual_seed(0)
    plain = build_llama({**BASE, "llama_config": dict(TINY_LLAMA)})
    torch.manual_seed(0)
    dropped = build_llama({**BASE, "llama_config": dict(TINY_LLAMA), "dropout_rate": 0.3})
    assert all(layer.self_attn.attention_dropout == 0.3 for layer in dropped.layers)
    embeds = torch.randn(2, 5, TINY_LLAMA["hidden_size"])
    mask, positions = torch.ones(2, 5, dtype=torch.long), torch.arange(5).expand(2, 5)

    def out(model):
        return run_backbone(model, embeds, mask, positions)[0]

    dropped.eval(), plain.eval()
    torch.testing.assert_close(out(dropped), out(plain))
    dropped.train(), plain.train()
    assert not torch.allclose(out(dropped), out(dropped))
    torch.testing.assert_close(out(plain), out(plain))  # rate 0: no hook, no randomness
    calls = []
    for layer in dropped.layers:  # every attention and MLP output passes the hook
        for module in (layer.self_attn, layer.mlp):
            module.register_forward_hook(lambda *a: calls.append(1))
    out(dropped)
    assert len(calls) == 2 * len(dropped.layers)


def test_missing_llama_path_is_a_clear_error(tmp_path):
    with pytest.raises(EtegrecError, match="llama_path .* nothing is downloaded"):
        build_llama({**BASE, "llama_path": str(tmp_path / "Llama-2-7b-hf")})


def test_local_checkpoint_with_lora_and_gradient_checkpointing_trains_only_adapters(checkpoint):
    model = build_llama({**BASE, "llama_path": checkpoint, "lora": True, "gradient_checkpointing": True})
    assert model.base_model.model.is_gradient_checkpointing
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("o_proj" in n for n in trainable)
    model.train()
    embeds = torch.randn(2, 5, TINY_LLAMA["hidden_size"], requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.long)
    hidden, _ = run_backbone(model, embeds, mask, torch.arange(5).expand(2, 5))
    hidden.pow(2).mean().backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(p.grad is not None for p in lora_b)  # gradients pass the checkpointed layers
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_adamw8bit_steps_or_falls_back_with_a_warning(caplog):
    param = torch.nn.Parameter(torch.ones(4096))
    with caplog.at_level(logging.WARNING):
        optimizer = build_adamw([param], 1e-2, 0.0, kind="adamw8bit")
    fell_back = isinstance(optimizer, torch.optim.AdamW)
    assert fell_back == any("falling back to torch.optim.AdamW" in r.message for r in caplog.records)
    param.sum().backward()
    optimizer.step()
    assert torch.all(param < 1)  # the step moved the parameter
    with pytest.raises(EtegrecError, match="adamw or adamw8bit"):
        build_adamw([param], 1e-2, 0.0, kind="sgd")
