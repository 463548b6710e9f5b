"""Lean checkpoints (``llama_path``: the frozen base weights stay in the base folder) and the peft
LoRA export. One tiny ETEGRec with LoRA over a tiny saved LLaMA is trained for 2 epochs through
``quick_start.run`` (module fixture) and reused."""
import json
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from recbole_etegrec import inference
from recbole_etegrec.commands.export_lora import main as export_main
from recbole_etegrec.commands.recommend import main as recommend_main
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.quick_start import run
from recbole_etegrec.recommend import recommend
from recbole_etegrec.trainer.checkpoint import last_checkpoint_path
from recbole_etegrec.trainer.etegrec_trainer import ETEGRecTrainer
from recbole_etegrec.trainer.lean import base_fingerprint, frozen_keys

ETEGREC = {"epochs": 2, "cycle": 1, "finetune_epochs": 0, "warm_epoch": 1, "debug_samples": 25,
           "lora": True, "lora_r": 4, "lora_alpha": 8}
HISTORIES = ([5, 7, 9], [242, 302, 377, 51])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=2)
    LlamaModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained(base, tiny_config_dict):
    """(result, the trainer after fit: its model is the in-memory one the -last.pth holds)."""
    seen = {}
    original = ETEGRecTrainer.fit

    def fit(self, *args, **kwargs):
        seen["trainer"] = self
        return original(self, *args, **kwargs)

    ETEGRecTrainer.fit = fit
    try:
        result = run("ETEGRec", "ml-100k", config_dict={**tiny_config_dict, **ETEGREC, "llama_path": base},
                     evaluate_test=False)
    finally:
        ETEGRecTrainer.fit = original
    return result, seen["trainer"]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_lean_checkpoints_hold_no_frozen_weights_and_are_smaller(trained, base, tmp_path):
    result, trainer = trained
    model = trainer.model
    frozen = frozen_keys(model)
    assert frozen and all(".lora_" not in k for k in frozen)
    assert any("embed_tokens" in k for k in frozen)
    for path in (result["saved_model_file"], last_checkpoint_path(result["saved_model_file"])):
        checkpoint = _load(path)
        assert checkpoint["lean"] is True
        assert checkpoint["base_model"] == {"path": base, "config_sha256": base_fingerprint(base)}
        keys = set(checkpoint["state_dict"])
        assert not keys & frozen
        assert keys | frozen == set(model.state_dict())
        assert any(".lora_A." in k for k in keys) and any(k.startswith("tokenizer.") for k in keys)
        assert "code_table" in checkpoint["other_parameter"] and "id_optimizer" in checkpoint
    last = last_checkpoint_path(result["saved_model_file"])
    full = dict(_load(last), state_dict=model.state_dict())
    torch.save(full, tmp_path / "full.pth", pickle_protocol=4)
    lean_size, full_size = os.path.getsize(last), os.path.getsize(tmp_path / "full.pth")
    print(f"checkpoint bytes: lean {lean_size}, full {full_size}")
    assert lean_size < full_size


def test_lean_checkpoint_recommends_as_the_in_memory_model(trained):
    result, trainer = trained
    model = trainer.model.eval()
    last = last_checkpoint_path(result["saved_model_file"])
    config, loaded, *_ = inference.load_data_and_model(last, state="warning")
    assert torch.equal(loaded.code_table.codes, model.code_table.codes)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    for history in HISTORIES:
        ours = recommend(loaded, config, history, topk=10)
        ref = recommend(model, trainer.config, history, topk=10)
        assert [i for i, _ in ours] == [i for i, _ in ref]
        assert torch.allclose(torch.tensor([s for _, s in ours]), torch.tensor([s for _, s in ref]))
    # the trainer's own load sites: best-checkpoint reload (evaluate) and resume; the frozen
    # weights come from the base folder, the rest from the checkpoint
    best = result["saved_model_file"]
    stored = _load(best)["state_dict"]
    trainer._load_checkpoint(best)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, stored[name] if name in stored else loaded.state_dict()[name]), name
    trainer.resume_checkpoint(last)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name


def test_changed_or_missing_base_model_is_one_error_line(trained, base, capsys):
    best = trained[0]["saved_model_file"]
    config_json = os.path.join(base, "config.json")
    saved = open(config_json, "rb").read()
    try:
        spec = json.loads(saved)
        spec["rms_norm_eps"] = 1e-3
        with open(config_json, "w") as f:
            json.dump(spec, f)
        with pytest.raises(EtegrecError) as err:
            inference.load_data_and_model(best, state="warning")
        message = str(err.value)
        assert "\n" not in message and best in message and base in message and "differs" in message
        assert "llama_path" in message
        assert recommend_main(["--checkpoint", best, "--items", "242"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint '{best}' was trained on the base model")
        os.remove(config_json)
        with pytest.raises(EtegrecError, match="does not exist: set llama_path"):
            inference.load_data_and_model(best, state="warning")
    finally:
        with open(config_json, "wb") as f:
            f.write(saved)


def test_lean_checkpoint_with_other_keys_does_not_fit(trained, tmp_path):
    checkpoint = _load(trained[0]["saved_model_file"])
    lora = sorted(k for k in checkpoint["state_dict"] if ".lora_B." in k)[0]
    del checkpoint["state_dict"][lora]
    torch.save(checkpoint, tmp_path / "broken.pth")
    with pytest.raises(EtegrecError) as err:
        inference.load_data_and_model(str(tmp_path / "broken.pth"), state="warning")
    assert "does not fit this model's size/settings (missing " in str(err.value) and lora in str(err.value)
    assert "\n" not in str(err.value)


def test_export_lora_loads_in_peft_with_equal_weights(trained, base, tmp_path, capsys):
    from peft import PeftModel

    best = trained[0]["saved_model_file"]
    out = tmp_path / "adapter"
    assert export_main(["--checkpoint", best, "--out", str(out)]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    peft_model = PeftModel.from_pretrained(LlamaModel.from_pretrained(base), str(out))
    exported = peft_model.state_dict()
    stored = {k[len("backbone."):]: v for k, v in _load(best)["state_dict"].items() if ".lora_" in k}
    assert stored
    for name, value in stored.items():
        assert torch.equal(exported[name], value), name
    # a checkpoint trained without LoRA: one error line
    checkpoint = _load(best)
    checkpoint["config"]["lora"] = False
    torch.save(checkpoint, tmp_path / "nolora.pth")
    capsys.readouterr()
    assert export_main(["--checkpoint", str(tmp_path / "nolora.pth"), "--out", str(tmp_path / "x")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "without LoRA" in lines[0] and lines[0].startswith("error: ")
    assert not (tmp_path / "x").exists()


def test_without_llama_path_checkpoints_stay_full(tiny_config_dict, tmp_path):
    """The from-scratch backbone (llama_config): the whole state_dict, no lean flag (as before)."""
    from recbole_etegrec.model.etegrec import ETEGRec
    from recbole_etegrec.trainer.lean import lean_metadata, lean_state_dict
    from tests.conftest import build

    config, (train, _, _) = build("ETEGRec", {**tiny_config_dict, "debug_samples": 25})
    model = ETEGRec(config, train._dataset)
    assert lean_metadata(config) == {} and set(lean_state_dict(model, config)) == set(model.state_dict())
