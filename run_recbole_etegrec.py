"""Run any RecBole model or plugin model (ETEGRec, TIGER) through one RecBole pipeline.

    python run_recbole_etegrec.py --model ETEGRec --dataset ml-100k
    python run_recbole_etegrec.py --model SASRec --dataset Instruments --epochs=1
    python run_recbole_etegrec.py --model_list SASRec,TIGER,ETEGRec --dataset Instruments \\
        --benchmark_dir benchmarks/Instruments
Any other ``--key=value`` (or ``--key value``) overrides a property-file key.
"""
import argparse
import os
import sys

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def use_tcmalloc():
    """Re-exec once with tcmalloc preloaded when it is installed: glibc malloc page-faults on large
    activations and costs ~1.7x on CPU (README, "Speed on CPU"). RECBOLE_ETEGREC_NO_TCMALLOC=1 skips."""
    if (os.path.exists(TCMALLOC) and TCMALLOC not in os.environ.get("LD_PRELOAD", "")
            and not os.environ.get("RECBOLE_ETEGREC_NO_TCMALLOC")):
        env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [TCMALLOC, os.environ.get("LD_PRELOAD")])))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", help="model name, e.g. ETEGRec, TIGER, SASRec")
    parser.add_argument("--model_list", help="comma-separated models run on the same split")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default ml-100k)")
    parser.add_argument("--config_files", help="comma-separated property files, later wins")
    parser.add_argument("--debug", action="store_true", help="keep only --debug_samples users")
    parser.add_argument("--debug_samples", type=int, default=1000, help="users kept by --debug")
    parser.add_argument("--benchmark_dir", help="write results.md/.csv/.png here (with --model_list)")
    args, rest = parser.parse_known_args(argv)
    if not args.model and not args.model_list:
        parser.error("give --model NAME or --model_list A,B,C")
    overrides, i = [], 0
    while i < len(rest):  # accept both --key=value and --key value
        arg = rest[i]
        if arg.startswith("--") and "=" not in arg and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            arg, i = f"{arg}={rest[i + 1]}", i + 1
        overrides.append(arg)
        i += 1
    return args, overrides


def main(argv=None):
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from recbole_etegrec.errors import EtegrecError
    from recbole_etegrec.benchmark import run_models

    config_files = [f for f in (args.config_files or "").split(",") if f]
    config_dict = {"debug": True, "debug_samples": args.debug_samples} if args.debug else None
    models = (args.model_list or args.model).split(",")
    try:
        results = run_models(models, args.dataset, config_files, config_dict, overrides,
                             benchmark_dir=args.benchmark_dir)
    except EtegrecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if all(r.get("error") is None and r.get("write_error") is None for r in results) else 1


if __name__ == "__main__":
    use_tcmalloc()
    sys.exit(main())
