"""Export the LoRA adapters of a trained ETEGRec checkpoint in peft's layout.

    python -m recbole_etegrec.export_lora --checkpoint saved/ETEGRec-<time>.pth --out lora/

The model is rebuilt from the checkpoint's config (``llama_path`` + the trained weights, as
``inference.load_data_and_model`` does) and ``model.backbone.save_pretrained(out)`` writes
``adapter_config.json`` and ``adapter_model.safetensors``; load them over the same base with
``peft.PeftModel.from_pretrained(LlamaModel.from_pretrained(llama_path), out)``. Only the
backbone's adapters are exported: the item tokenizer, the codebooks and the projectors stay in the
checkpoint. A checkpoint trained without LoRA is an error. The command is
``recbole_etegrec.commands.export_lora``.
"""
import os
import sys

from recbole_etegrec.errors import EtegrecError


def export_lora(checkpoint_path: str, out: str) -> str:
    """Write the adapters of ``checkpoint_path`` to ``out``; returns ``out``."""
    from recbole_etegrec.inference import load_checkpoint, load_data_and_model

    config = load_checkpoint(checkpoint_path)["config"]  # check cheaply before building anything
    if config["model"] != "ETEGRec":
        raise EtegrecError(f"checkpoint '{checkpoint_path}' is a {config['model']} checkpoint: export_lora "
                           "needs an ETEGRec checkpoint trained with --lora=True")
    if not config["lora"]:
        raise EtegrecError(f"checkpoint '{checkpoint_path}' was trained without LoRA (lora: False), so it has no "
                           "adapters to export: train with --lora=True (the whole backbone is in the checkpoint)")
    if os.path.isfile(out):
        raise EtegrecError(f"--out '{out}' is a file: give a folder for adapter_config.json and "
                           "adapter_model.safetensors")
    _, model, *_ = load_data_and_model(checkpoint_path, state="warning")
    try:
        os.makedirs(out, exist_ok=True)
        model.backbone.save_pretrained(out)
    except OSError as err:
        raise EtegrecError(f"cannot write the adapters to '{out}' ({err.strerror or err}): choose a writable "
                           "--out folder") from None
    return out


if __name__ == "__main__":  # the command: recbole_etegrec.commands.export_lora
    from recbole_etegrec.commands.export_lora import main

    sys.exit(main())
