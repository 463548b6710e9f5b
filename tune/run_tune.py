"""Hyper-parameter search with Ray Tune and ASHA: a thin script over ``recbole_etegrec.commands.tune``.

    python tune/run_tune.py --model SASRec --dataset ml-100k --space tune/spaces/sasrec.yaml \
        --num_samples 8 [--config_files a.yaml,b.yaml] [--address ray://...] [--key=value ...]

Same as ``recbole-etegrec tune ...``; options and outputs: tune/README.md.
"""
import sys

from recbole_etegrec.commands.tune import main

if __name__ == "__main__":
    sys.exit(main())
