"""Beam-search throughput of a trained ETEGRec checkpoint, with and without the KV cache.

    python benchmarks/beam_search_speed.py --dataset ml-100k --checkpoint saved/ETEGRec-....pth \
        [--users 256] [--num_beams 20] [--max_batches N] [--config_files a.yaml] [--key=value ...]

Builds the model and the valid split exactly as the run script does (pass the same property files
and overrides as the training run), loads the checkpoint, and prints users/second for both
decoders, plus whether they returned the same items. Decodes the valid users batch by batch until
``--users`` users or ``--max_batches`` batches (``eval_batch_size`` users each). Prints measured
figures only; ``tests/test_benchmark_scripts.py`` runs it on a tiny ml-100k model.
"""
import argparse
import sys
import time

import torch

from recbole_etegrec.config import Config
from recbole_etegrec.quick_start import load_data
from recbole_etegrec.registry import get_model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config_files", default="", help="comma-separated property files (under the overrides)")
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--num_beams", type=int, default=20)
    parser.add_argument("--max_batches", type=int, default=None, help="decode at most this many valid batches")
    args, rest = parser.parse_known_args(argv)
    files = [f for f in args.config_files.split(",") if f]
    config = Config(model="ETEGRec", dataset=args.dataset, config_file_list=files, cmd_args=rest)
    _, train, valid, _ = load_data(config)  # split + the item tokenizer stage
    model = get_model("ETEGRec")(config, train._dataset)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state["other_parameter"])
    model.eval()
    valid.set_code_table(model.code_table.codes)
    batches, n = [], 0
    for inter, *_ in valid:
        if n >= args.users or (args.max_batches is not None and len(batches) >= args.max_batches):
            break
        end = int(inter["seq_end_position"][0]) + 1
        batches.append((inter["code_input"][:, :end], inter["code_attention"][:, :end]))
        n += len(inter)
    rows, results = sum(len(b[0]) for b in batches), {}
    print(f"{args.dataset}: {rows} users in {len(batches)} batches (valid loader: {len(valid)}), "
          f"{args.num_beams} beams, {torch.get_num_threads()} threads")
    for use_cache in (True, False):
        start = time.perf_counter()
        items = [model.generate(c, a, num_beams=args.num_beams, use_cache=use_cache).items for c, a in batches]
        seconds = time.perf_counter() - start
        results[use_cache] = torch.cat(items)
        print(f"kv_cache={use_cache}: {seconds:.4f} s, {rows / seconds:.1f} users/s")
    print(f"same items with and without cache: {torch.equal(results[True], results[False])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
