"""The ``tune`` command: a Ray Tune + ASHA sweep (``recbole_etegrec.tune``; options: tune/README.md).

    python tune/run_tune.py --model SASRec --dataset ml-100k --space tune/spaces/sasrec.yaml \\
        --num_samples 8 [--config_files a.yaml,b.yaml] [--address ray://...] [--key=value ...]
    recbole-etegrec tune ...  # the same
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from recbole_etegrec.commands.args import ArgumentParser, handle
from recbole_etegrec.commands.args import parse_args as parse_command_line
from recbole_etegrec.errors import EtegrecError

PROG = "python tune/run_tune.py"


def parse_args(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> argparse.Namespace:
    """The sweep's options; ``args.cmd_args`` are the config overrides (``--key=value`` strings)."""
    parser = ArgumentParser(prog=prog, description="Hyper-parameter search for any recbole_etegrec model with "
                                                   "Ray Tune and ASHA early stopping.")
    add = parser.add_argument
    add("--model", required=True)
    add("--dataset", required=True)
    add("--space", required=True, help="search space YAML (see tune/spaces/)")
    add("--num_samples", type=int, default=8, help="samples drawn (times each grid combination)")
    add("--config_files", default="", help="comma-separated property files under the samples")
    add("--address", default=None, help="join this Ray cluster instead of starting a local one")
    add("--num_cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    add("--cpus_per_trial", type=float, default=1)
    add("--gpus_per_trial", type=float, default=0, help="may be fractional, e.g. 0.5")
    add("--max_concurrent", type=int, default=None)
    add("--grace_period", type=int, default=2, help="ASHA: evaluations before a trial can be cut")
    add("--reduction_factor", type=float, default=2, help="ASHA: keep 1/this of trials per rung")
    add("--seed", type=int, default=2020, help="seed of the random search (sampled configs)")
    add("--output_dir", default=None)
    add("--ray_dir", default=None, help="Ray's own trial logs (default: ~/ray_results)")
    add("--debug", action="store_true", help="keep only --debug_samples users (fast)")
    add("--debug_samples", type=int, default=None)
    add("--skip_final_test", action="store_true", help="do not rerun the best config on test")
    add("--verbose", action="store_true", help="forward the trials' RecBole logs to this console")
    args, cmd_args = parse_command_line(parser, argv)
    check_options(args)
    args.cmd_args, args.prog, args.argv = cmd_args, prog, list(sys.argv[1:] if argv is None else argv)
    args.config_files = [os.path.abspath(p) for p in args.config_files.split(",") if p.strip()]
    return args


# option: (test, what it must be); checked before Ray starts (Ray would assert, or sample forever)
_OPTION_RULES = {
    "num_samples": (lambda v: v >= 1, "at least 1"),
    "num_cpus": (lambda v: v is None or v >= 1, "at least 1"),
    "cpus_per_trial": (lambda v: v > 0, "above 0"),
    "gpus_per_trial": (lambda v: v >= 0, "0 or more"),
    "max_concurrent": (lambda v: v is None or v >= 1, "at least 1"),
    "grace_period": (lambda v: v >= 1, "at least 1"),
    "reduction_factor": (lambda v: v > 1, "above 1"),
    "debug_samples": (lambda v: v is None or v >= 1, "at least 1"),
}


def check_options(args) -> None:
    for name, (ok, need) in _OPTION_RULES.items():
        value = getattr(args, name)
        if not ok(value):
            raise EtegrecError(f"--{name} must be {need}, got {value}: fix the option")


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """The sweep's exit code; a user-facing mistake prints one ``error: ...`` line and returns 2."""

    def command() -> int:
        args = parse_args(argv, prog)
        from recbole_etegrec.tune import sweep

        return sweep(args)

    return handle(command)
