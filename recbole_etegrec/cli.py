"""One command line for the plugin: the shared argument parser, the shared error handler, and the
``recbole-etegrec`` console script.

    recbole-etegrec run --model ETEGRec --dataset ml-100k       # == python run_recbole_etegrec.py ...
    recbole-etegrec prepare SOURCE --name Instruments           # == python -m recbole_etegrec.data.prepare
    recbole-etegrec tokenize --dataset Instruments              # == python -m recbole_etegrec.tokenizer.pretrain
    recbole-etegrec tune --model SASRec --dataset ml-100k --space tune/spaces/sasrec.yaml
    recbole-etegrec recommend --checkpoint saved/ETEGRec-<time>.pth --user 196

Argument rules (``parse_args``), the same for every entry point:

* the entry point's declared options parse as in argparse (``--name value`` or ``--name=value``),
  but never by abbreviation (``--debug_s`` is not ``--debug_samples``: it is a config key);
* any other ``--key=value`` is a config override, handed unchanged to ``Config(cmd_args=...)``;
* ``--key value`` becomes ``--key=value`` when ``value`` is not itself an option (a value may be
  negative: ``--lr_rec -0.001``);
* a bare ``--flag`` (last, or followed by another option) means ``--flag=True``;
* anything else (a stray word) is an error. Entry points that take no config overrides
  (``prepare``, ``recommend``) reject every undeclared option.

Errors (``handle``): an ``EtegrecError`` -- a user mistake, argparse's usage errors included --
prints ``error: <message>`` as one line on stderr and exits 2; Ctrl-C prints one line and exits
130; neither prints a traceback. ``--help`` prints the help and exits 0.

Heavy modules (torch, RecBole, transformers, Ray) are imported inside the subcommands only.
"""
import argparse
import importlib
import os
import sys
from typing import Callable, List, NoReturn, Optional, Sequence, Tuple

from recbole_etegrec.errors import EtegrecError

OVERRIDE_HINT = "config overrides look like --key=value"


class UsageError(EtegrecError):
    """A malformed command line (argparse's own errors included): one ``error:`` line, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse without option abbreviations, whose usage errors raise ``UsageError``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0  # store_true/store_false/count/help take none


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
               overrides: bool = True) -> Tuple[argparse.Namespace, List[str]]:
    """``(declared options, config overrides as '--key=value' strings)`` under the module's rules.
    ``argv`` defaults to ``sys.argv[1:]``; ``overrides=False`` rejects every undeclared option."""
    argv = list(sys.argv[1:] if argv is None else argv)
    declared = parser._option_string_actions

    def is_option(token: str) -> bool:
        return token.startswith("--") or token.partition("=")[0] in declared

    known, cmd_args, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg.partition("=")[0]
        if arg == "--":  # argparse's end of options: the rest is positional
            known += argv[i:]
            break
        if name in declared:
            known.append(arg)
            if "=" not in arg and _takes_value(declared[name]) and i + 1 < len(argv):
                known.append(argv[i + 1])
                i += 1
        elif overrides and arg.startswith("--") and len(name) > 2:
            if "=" in arg:
                cmd_args.append(arg)
            elif i + 1 < len(argv) and not is_option(argv[i + 1]):
                cmd_args.append(f"{arg}={argv[i + 1]}")
                i += 1
            else:
                cmd_args.append(f"{arg}=True")
        else:  # a positional, or (without overrides) an undeclared option: argparse decides
            known.append(arg)
        i += 1
    args, stray = parser.parse_known_args(known)
    if stray:
        hint = f": {OVERRIDE_HINT}" if overrides else f" (see '{parser.prog} --help')"
        raise UsageError(f"unrecognized argument '{stray[0]}'{hint}")
    return args, cmd_args


def handle(command: Callable[[], Optional[int]]) -> int:
    """Run ``command`` and return its exit code (``None`` -> 0), the one error policy of every
    entry point: ``EtegrecError`` -> one ``error: ...`` line on stderr and 2; Ctrl-C -> one
    line and 130. Anything else is a bug and keeps its traceback."""
    try:
        code = command()
    except EtegrecError as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"error: {message or type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


# -- run: train and evaluate models (python run_recbole_etegrec.py) -------------------------------
def _run_parser(prog: str) -> ArgumentParser:
    parser = ArgumentParser(
        prog=prog, description="Run any RecBole model or plugin model (ETEGRec, TIGER) through one "
                               "RecBole pipeline.",
        epilog="Any other --key=value (or --key value) overrides a property-file key, e.g. --epochs=1.")
    parser.add_argument("--model", "-m", help="model name, e.g. ETEGRec, TIGER, SASRec")
    parser.add_argument("--model_list", help="comma-separated models run on the same split")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default ml-100k)")
    parser.add_argument("--config_files", help="comma-separated property files, later wins")
    parser.add_argument("--debug", action="store_true", help="keep only --debug_samples users")
    parser.add_argument("--debug_samples", type=int, default=1000, help="users kept by --debug")
    parser.add_argument("--benchmark_dir", help="write results.md/.csv/.png here (with --model_list)")
    parser.add_argument("--budget", help="with --benchmark_dir: budget file, or name in properties/benchmark/ "
                                         "(default: the dataset's)")
    return parser


def run_main(argv: Optional[Sequence[str]] = None, prog: str = "python run_recbole_etegrec.py") -> int:
    """Train and evaluate ``--model`` (or every ``--model_list`` model on one split); 0 when every
    model ran, 1 when one failed (its row says why), 2 for a user error."""

    def command() -> int:
        parser = _run_parser(prog)
        args, overrides = parse_args(parser, argv)
        if not args.model and not args.model_list:
            parser.error("give --model NAME or --model_list A,B,C")
        from recbole_etegrec.benchmark import run_models

        config_files = [f for f in (args.config_files or "").split(",") if f]
        config_dict = {"debug": True, "debug_samples": args.debug_samples} if args.debug else None
        models = (args.model_list or args.model).split(",")
        results = run_models(models, args.dataset, config_files, config_dict, overrides,
                             benchmark_dir=args.benchmark_dir, budget=args.budget)
        return 0 if all(r.get("error") is None and r.get("write_error") is None for r in results) else 1

    return handle(command)


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


# -- the console script ----------------------------------------------------------------------------
# name -> (module, function, help); each function takes (argv, prog) and returns the exit code
SUBCOMMANDS = {
    "run": ("recbole_etegrec.cli", "run_main", "train and evaluate models (= python run_recbole_etegrec.py)"),
    "prepare": ("recbole_etegrec.data.prepare", "main", "make RecBole atomic files from a public dataset"),
    "tokenize": ("recbole_etegrec.stages.item_tokenizer", "main", "pretrain the RQ-VAE item tokenizer"),
    "tune": ("recbole_etegrec.tune", "main", "hyper-parameter search with Ray Tune (= tune/run_tune.py)"),
    "recommend": ("recbole_etegrec.recommend", "main", "recommend items with a trained checkpoint"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``recbole-etegrec COMMAND [options]``: dispatch to the command's own entry point."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(prog="recbole-etegrec",
                            description="ETEGRec / TIGER RecBole plugin: one command line.",
                            epilog="Run 'recbole-etegrec COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)

    def command() -> int:
        name = parser.parse_args(argv[:1]).command
        rest = argv[1:]
        if name == "run" and from_command_line and not {"-h", "--help"} & set(rest):
            use_tcmalloc(argv)
        module, function, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), function)(rest, prog=f"recbole-etegrec {name}")

    return handle(command)


if __name__ == "__main__":
    sys.exit(main())
