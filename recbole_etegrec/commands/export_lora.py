"""The ``export_lora`` command: the LoRA adapters of an ETEGRec checkpoint in peft's layout
(``recbole_etegrec.export_lora``).

    python -m recbole_etegrec.export_lora --checkpoint saved/ETEGRec-<time>.pth --out lora/
    recbole-etegrec export_lora --checkpoint saved/ETEGRec-<time>.pth --out lora/
"""
import os
from typing import Optional, Sequence

from recbole_etegrec.commands.args import ArgumentParser, handle, parse_args

PROG = "python -m recbole_etegrec.export_lora"


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """0, or 2 with one error line."""
    parser = ArgumentParser(prog=prog, description="Export an ETEGRec checkpoint's LoRA adapters (peft layout).")
    parser.add_argument("--checkpoint", required=True, help="saved/ETEGRec-<time>.pth from a --lora=True run")
    parser.add_argument("--out", required=True, help="folder for adapter_config.json + adapter_model.safetensors")

    def command() -> int:
        args, _ = parse_args(parser, argv, overrides=False)
        from recbole_etegrec.export_lora import export_lora

        out = export_lora(args.checkpoint, args.out)
        print(f"wrote {os.path.join(out, 'adapter_config.json')} and "
              f"{os.path.join(out, 'adapter_model.safetensors')}")
        return 0

    return handle(command)
