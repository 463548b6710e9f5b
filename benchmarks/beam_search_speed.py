"""Beam-search throughput of a trained ETEGRec checkpoint, with and without the KV cache.

    python benchmarks/beam_search_speed.py --dataset ml-100k --checkpoint saved/ETEGRec-....pth \
        [--users 256] [--num_beams 20] [--key=value ...]

Builds the model and the valid split exactly as the run script does (pass the same property
overrides as the training run), loads the checkpoint, and prints users/second for both decoders,
plus whether they returned the same items. Prints measured figures only.
"""
import argparse
import time

import torch

from recbole_etegrec.config import Config
from recbole_etegrec.quick_start import load_data
from recbole_etegrec.registry import get_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--num_beams", type=int, default=20)
    args, rest = parser.parse_known_args()
    config = Config(model="ETEGRec", dataset=args.dataset, cmd_args=rest)
    _, train, valid, _ = load_data(config)  # split + the item tokenizer stage
    model = get_model("ETEGRec")(config, train._dataset)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state["other_parameter"])
    model.eval()
    valid.set_code_table(model.code_table.codes)
    batches, n = [], 0
    for inter, *_ in valid:
        end = int(inter["seq_end_position"][0]) + 1
        batches.append((inter["code_input"][:, :end], inter["code_attention"][:, :end]))
        n += len(inter)
        if n >= args.users:
            break
    rows, results = sum(len(b[0]) for b in batches), {}
    print(f"{args.dataset}: {rows} users, {args.num_beams} beams, {torch.get_num_threads()} threads")
    for use_cache in (True, False):
        start = time.perf_counter()
        items = [model.generate(c, a, num_beams=args.num_beams, use_cache=use_cache).items for c, a in batches]
        seconds = time.perf_counter() - start
        results[use_cache] = torch.cat(items)
        print(f"kv_cache={use_cache}: {seconds:.2f} s, {rows / seconds:.1f} users/s")
    print(f"same items with and without cache: {torch.equal(results[True], results[False])}")


if __name__ == "__main__":
    main()
