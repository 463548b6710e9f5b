"""Inference throughput of a trained ETEGRec or TIGER checkpoint: validation's beam search, the
``recommend --all_users`` job, and the likelihood scoring of candidates (``predict``).

    python benchmarks/inference_speed.py --checkpoint saved/ETEGRec-<time>.pth \
        [--users N] [--candidates 100] [--likelihood_users 40] [--max_batches N] [--out FILE.md]

Loads the checkpoint as ``recommend`` does (``inference.load_data_and_model``, never trains) and
times, on the same model and beam width:
* validation: the valid loader's batches through ``full_sort_predict`` (what RecBole's evaluation
  runs per batch, metrics aside), until ``--users`` users or ``--max_batches`` batches;
* the batch job's code path (``recommend_batch``) on validation's own histories (like for like);
* ``--all_users``: ``recommend_all`` for the same users, from their whole histories (validation's
  end before the valid item, so they are shorter; both capped at ``MAX_ITEM_LIST_LENGTH``);
* likelihood: ``score_candidates`` for the first ``--likelihood_users`` users, each with its last
  item and ``--candidates`` random items (the rows of RecBole's ``uni<candidates>``
  evaluation), with the KV cache (history encoded once) and without (history re-run per step).
Run it as the run script runs (``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4`` when
installed). Prints measured figures only; ``tests/test_benchmark_scripts.py`` runs it on a tiny ml-100k model.
"""
import argparse
import sys
import time

import torch

from recbole_etegrec.inference import load_data_and_model
from recbole_etegrec.io import atomic_write
from recbole_etegrec.recommend import all_user_histories, recommend_all, recommend_batch, score_candidates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--users", type=int, default=10**9, help="users per timed pass (default: every valid user)")
    parser.add_argument("--candidates", type=int, default=100, help="random candidates per user (likelihood)")
    parser.add_argument("--likelihood_users", type=int, default=40, help="users whose candidates are scored")
    parser.add_argument("--max_batches", type=int, default=None, help="validation: at most this many batches")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    config, model, dataset, _, valid, _ = load_data_and_model(args.checkpoint, state="warning")

    start, users, batches, seen, valid_histories = time.perf_counter(), 0, 0, [], []
    for inter, *_ in valid:
        if users >= args.users or (args.max_batches is not None and batches >= args.max_batches):
            break
        model.full_sort_predict(inter.to(config["device"]))
        users, batches = users + len(inter), batches + 1
        seen.append(inter[config["USER_ID_FIELD"]])
        valid_histories += [row[:n].tolist() for row, n in zip(inter["item_id_list"], inter["item_length"].tolist())]
    valid_s = time.perf_counter() - start

    start = time.perf_counter()  # the batch job's code path on validation's own histories: like for like
    for begin in range(0, len(valid_histories), model.chunk_size):
        recommend_batch(model, config, valid_histories[begin:begin + model.chunk_size], topk=10)
    same_s = time.perf_counter() - start

    start = time.perf_counter()  # the same users (their whole histories, capped alike)
    table = recommend_all(model, config, dataset, topk=10, progress=False, only=torch.cat(seen).tolist())
    all_s = time.perf_counter() - start

    ids, histories = all_user_histories(dataset)
    max_len, kept = config["MAX_ITEM_LIST_LENGTH"], set(table["user"].unique())
    to_token = dataset.field2id_token[dataset.uid_field]
    mean_all = sum(min(len(h), max_len) for u, h in zip(ids, histories) if str(to_token[u]) in kept) / len(kept)
    mean_valid = sum(len(h) for h in valid_histories) / len(valid_histories)
    n = max(1, min(users, args.likelihood_users))
    generator = torch.Generator().manual_seed(0)
    negatives = torch.randint(1, dataset.item_num, (n, args.candidates), generator=generator)
    items = torch.cat([torch.tensor([[h[-1]] for h in histories[:n]]), negatives], dim=1).reshape(-1)
    parents = torch.arange(n).repeat_interleave(args.candidates + 1)
    timed, scores = {}, {}
    for cache in (True, False):
        model.use_kv_cache = cache
        start = time.perf_counter()
        scores[cache] = score_candidates(model, config, histories[:n], parents, items)
        timed[cache] = time.perf_counter() - start

    rows = len(items)
    lines = [
        f"{config['model']} on {config['dataset']} ({args.checkpoint}): {model.num_beams} beams, "
        f"generate_chunk_size {model.chunk_size}, {torch.get_num_threads()} threads",
        "",
        "| pass | units | seconds | per second | note |",
        "|---|---|---|---|---|",
        f"| validation (valid loader, full_sort_predict) | {users} users | {valid_s:.2f} | {users / valid_s:.1f} | "
        f"{batches} batches of eval_batch_size {config['eval_batch_size']} |",
        f"| recommend_batch on the validation histories | {users} users | {same_s:.2f} | {users / same_s:.1f} | "
        f"{valid_s / same_s:.2f}x validation's users/s |",
        f"| recommend --all_users (top 10) | {table['user'].nunique()} users | {all_s:.2f} | "
        f"{table['user'].nunique() / all_s:.1f} | {valid_s / users / (all_s / table['user'].nunique()):.2f}x "
        f"validation's users/s; mean history {mean_all:.2f} items vs validation's {mean_valid:.2f} |",
        f"| likelihood, KV cache | {rows} rows | {timed[True]:.2f} | {rows / timed[True]:.1f} | "
        f"{n} users x {args.candidates + 1} candidates |",
        f"| likelihood, no KV cache | {rows} rows | {timed[False]:.2f} | {rows / timed[False]:.1f} | "
        f"largest score difference to the cached pass {float((scores[True] - scores[False]).abs().max()):.1e} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        with atomic_write(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
