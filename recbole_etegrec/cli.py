"""The ``recbole-etegrec`` console script: one command line over the plugin's commands.

    recbole-etegrec run --model ETEGRec --dataset ml-100k       # == python run_recbole_etegrec.py ...
    recbole-etegrec prepare SOURCE --name Instruments           # == python -m recbole_etegrec.data.prepare
    recbole-etegrec tokenize --dataset Instruments              # == python -m recbole_etegrec.tokenizer.pretrain
    recbole-etegrec tune --model SASRec --dataset ml-100k --space tune/spaces/sasrec.yaml
    recbole-etegrec recommend --checkpoint saved/ETEGRec-<time>.pth --user 196
    recbole-etegrec export_lora --checkpoint saved/ETEGRec-<time>.pth --out lora/

Each command's parsing and ``main`` live in ``recbole_etegrec.commands``; the argument rules and the
one-line error policy every command shares are ``recbole_etegrec.commands.args`` (re-exported
here). Library modules never import this module or the commands (``tests/test_imports.py``).
Heavy modules (torch, RecBole, transformers, Ray) are imported inside the commands only.
"""
import os
import sys
from typing import Optional, Sequence

from recbole_etegrec.commands import export_lora, prepare, recommend, run, tokenize, tune
from recbole_etegrec.commands.args import OVERRIDE_HINT, ArgumentParser, UsageError, handle, parse_args

__all__ = ["OVERRIDE_HINT", "ArgumentParser", "UsageError", "handle", "parse_args", "SUBCOMMANDS", "main"]

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def use_tcmalloc(argv: Sequence[str]) -> None:
    """Re-exec ``recbole-etegrec ARGV`` once with tcmalloc preloaded when it is installed (glibc
    malloc costs ~1.7x on CPU, README "Speed on CPU"); RECBOLE_ETEGREC_NO_TCMALLOC=1 skips it.
    ``run_recbole_etegrec.py`` does the same before its first import."""
    if (os.path.exists(TCMALLOC) and TCMALLOC not in os.environ.get("LD_PRELOAD", "")
            and not os.environ.get("RECBOLE_ETEGREC_NO_TCMALLOC")):
        env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [TCMALLOC, os.environ.get("LD_PRELOAD")])))
        launcher = "import sys; from recbole_etegrec.cli import main; sys.exit(main())"
        os.execve(sys.executable, [sys.executable, "-c", launcher, *argv], env)


# name -> (command module, help); each module's main takes (argv, prog) and returns the exit code
SUBCOMMANDS = {
    "run": (run, "train and evaluate models (= python run_recbole_etegrec.py)"),
    "prepare": (prepare, "make RecBole atomic files from a public dataset"),
    "tokenize": (tokenize, "pretrain the RQ-VAE item tokenizer"),
    "tune": (tune, "hyper-parameter search with Ray Tune (= tune/run_tune.py)"),
    "recommend": (recommend, "recommend items with a trained checkpoint"),
    "export_lora": (export_lora, "export an ETEGRec checkpoint's LoRA adapters (peft layout)"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``recbole-etegrec COMMAND [options]``: dispatch to the command's ``main``."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(prog="recbole-etegrec",
                            description="ETEGRec / TIGER RecBole plugin: one command line.",
                            epilog="Run 'recbole-etegrec COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)

    def command() -> int:
        name = parser.parse_args(argv[:1]).command
        rest = argv[1:]
        if name == "run" and from_command_line and not {"-h", "--help"} & set(rest):
            use_tcmalloc(argv)
        return SUBCOMMANDS[name][0].main(rest, prog=f"recbole-etegrec {name}")

    return handle(command)


if __name__ == "__main__":
    sys.exit(main())
