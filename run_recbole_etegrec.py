"""Run any RecBole model or plugin model (ETEGRec, TIGER) through one RecBole pipeline.

    python run_recbole_etegrec.py --model ETEGRec --dataset ml-100k
    python run_recbole_etegrec.py --model SASRec --dataset Instruments --epochs=1
    python run_recbole_etegrec.py --model_list SASRec,TIGER,ETEGRec --dataset Instruments \\
        --benchmark_dir benchmarks/Instruments
Any other ``--key=value`` (or ``--key value``) overrides a property-file key; the argument rules
are those of every entry point (``recbole_etegrec/commands/args.py``). Same as ``recbole-etegrec run ...``.
"""
import os
import sys

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def use_tcmalloc():
    """Re-exec once with tcmalloc preloaded when it is installed: glibc malloc page-faults on large
    activations and costs ~1.7x on CPU (README, "Speed on CPU"). RECBOLE_ETEGREC_NO_TCMALLOC=1 skips.
    Kept here, not imported from recbole_etegrec.cli, so it runs before the package imports torch
    (which would then be imported twice); ``recbole-etegrec run`` uses ``cli.use_tcmalloc``."""
    if (os.path.exists(TCMALLOC) and TCMALLOC not in os.environ.get("LD_PRELOAD", "")
            and not os.environ.get("RECBOLE_ETEGREC_NO_TCMALLOC")):
        env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [TCMALLOC, os.environ.get("LD_PRELOAD")])))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv=None) -> int:
    """The ``run`` command (``recbole-etegrec run`` calls the same function)."""
    from recbole_etegrec.commands.run import main as run_main

    return run_main(argv)


if __name__ == "__main__":
    use_tcmalloc()
    sys.exit(main())
