"""The ``run`` command: train and evaluate models through one RecBole pipeline.

    python run_recbole_etegrec.py --model ETEGRec --dataset ml-100k     # == recbole-etegrec run ...
"""
from typing import Optional, Sequence

from recbole_etegrec.commands.args import ArgumentParser, handle, parse_args

PROG = "python run_recbole_etegrec.py"


def build_parser(prog: str = PROG) -> ArgumentParser:
    parser = ArgumentParser(
        prog=prog, description="Run any RecBole model or plugin model (ETEGRec, TIGER) through one "
                               "RecBole pipeline.",
        epilog="Any other --key=value (or --key value) overrides a property-file key, e.g. --epochs=1.")
    parser.add_argument("--model", "-m", help="model name, e.g. ETEGRec, TIGER, SASRec")
    parser.add_argument("--model_list", help="comma-separated models run on the same split")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default ml-100k)")
    parser.add_argument("--config_files", help="comma-separated property files, later wins")
    parser.add_argument("--debug", action="store_true", help="keep only --debug_samples users")
    parser.add_argument("--debug_samples", type=int, help="users kept by --debug (default: the debug_samples key)")
    parser.add_argument("--benchmark_dir", help="write results.md/.csv/.png here (with --model_list)")
    parser.add_argument("--budget", help="with --benchmark_dir: budget file, or name in properties/benchmark/ "
                                         "(default: the dataset's)")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """Train and evaluate ``--model`` (or every ``--model_list`` model on one split); 0 when every
    model ran, 1 when one failed (its row says why), 2 for a user error."""

    def command() -> int:
        parser = build_parser(prog)
        args, overrides = parse_args(parser, argv)
        if not args.model and not args.model_list:
            parser.error("give --model NAME or --model_list A,B,C")
        from recbole_etegrec.benchmark import run_models

        config_files = [f for f in (args.config_files or "").split(",") if f]
        # only what was given: a property file's debug_samples is not replaced by a parser default
        config_dict = {**({"debug": True} if args.debug else {}),
                       **({"debug_samples": args.debug_samples} if args.debug_samples is not None else {})} or None
        models = (args.model_list or args.model).split(",")
        results = run_models(models, args.dataset, config_files, config_dict, overrides,
                             benchmark_dir=args.benchmark_dir, budget=args.budget)
        return 0 if all(r.get("error") is None and r.get("write_error") is None for r in results) else 1

    return handle(command)
