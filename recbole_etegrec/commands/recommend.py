"""The ``recommend`` command: top-k items from a trained checkpoint (``recbole_etegrec.recommend``).

    python -m recbole_etegrec.recommend --checkpoint saved/ETEGRec-<time>.pth --user 196
    recbole-etegrec recommend --checkpoint saved/TIGER-<time>.pth --items 242,302,377 --json
    recbole-etegrec recommend --checkpoint saved/ETEGRec-<time>.pth --all_users --topk 10 --out recs.parquet
    recbole-etegrec recommend --checkpoint saved/ETEGRec-<time>.pth --candidates cands.csv --out scored.csv

``--all_users`` and ``--candidates`` write one row per (user, rank, item, score) to ``--out``
(CSV, or Parquet for a ``.parquet`` name), atomically, and print one summary line.
"""
import argparse
import json
import sys
import time
from typing import Optional, Sequence

from recbole_etegrec.commands.args import ArgumentParser, handle, parse_args
from recbole_etegrec.errors import EtegrecError

PROG = "python -m recbole_etegrec.recommend"


def _parse(argv, prog: str = PROG) -> argparse.Namespace:
    parser = ArgumentParser(prog=prog, description="Recommend items with a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="saved/<Model>-<time>.pth from a training run")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user token: that user's whole history in the dataset")
    who.add_argument("--items", help="comma-separated original item tokens (e.g. ASINs), oldest first")
    who.add_argument("--all_users", action="store_true", help="every user of the dataset, to --out")
    who.add_argument("--candidates", help="CSV with user,item columns: score and rank them, to --out")
    parser.add_argument("--out", help="--all_users / --candidates: output file, .csv or .parquet")
    parser.add_argument("--topk", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--skip_unknown", action="store_true",
                        help="drop unknown --items (or --candidates rows) with a warning")
    parser.add_argument("--exclude_history", action="store_true", help="never recommend history items")
    parser.add_argument("--verbose", action="store_true", help="show RecBole's INFO log on stderr")
    return parse_args(parser, argv, overrides=False)[0]


def run(args) -> dict:
    """Everything ``main`` prints, as a dict."""
    from recbole_etegrec.inference import load_data_and_model
    from recbole_etegrec.recommend import item_ids, item_titles, recommend, user_history

    tokens = [t.strip() for t in (args.items or "").split(",") if t.strip()]
    if args.items is not None and not tokens:
        raise EtegrecError("--items is empty: give comma-separated item tokens, e.g. --items 242,302")
    config, model, dataset, *_ = load_data_and_model(args.checkpoint, state=None if args.verbose else "warning")
    skipped = []
    if args.user is not None:
        history = user_history(dataset, args.user)
    else:
        history, skipped = item_ids(dataset, tokens, args.skip_unknown)
        if skipped:
            print(f"warning: skipped unknown item token(s) {', '.join(skipped)}", file=sys.stderr)
    ranked = recommend(model, config, history, args.topk, args.exclude_history)
    titles = item_titles(config)
    to_token = dataset.field2id_token[dataset.iid_field]
    used = history[-config["MAX_ITEM_LIST_LENGTH"]:]
    return {
        "checkpoint": args.checkpoint, "model": config["model"], "dataset": config["dataset"],
        "user": args.user, "history": [str(to_token[i]) for i in used],
        "history_length": len(history), "skipped": skipped,
        "recommendations": [
            {"rank": r, "item": str(to_token[i]), "title": titles.get(str(to_token[i])), "score": s}
            for r, (i, s) in enumerate(ranked, start=1)],
    }


def run_batch(args) -> str:
    """``--all_users`` or ``--candidates``: writes ``--out``; returns the summary line."""
    from recbole_etegrec import recommend as lib
    from recbole_etegrec.inference import load_data_and_model

    if args.topk < 1:
        raise EtegrecError(f"--topk {args.topk} must be at least 1")
    lib.check_table_path(args.out)  # before the checkpoint is read
    pairs = lib.read_candidates(args.candidates) if args.candidates else None
    config, model, dataset, *_ = load_data_and_model(args.checkpoint, state=None if args.verbose else "warning")
    start = time.time()
    if pairs is None:
        table = lib.recommend_all(model, config, dataset, args.topk, args.exclude_history)
        what = f"top {args.topk} for {table['user'].nunique()} users"
    else:
        table, warnings = lib.rerank(model, config, dataset, pairs, args.skip_unknown)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        what = f"{len(table)} candidates of {table['user'].nunique()} users, ranked per user"
    seconds = time.time() - start
    lib.write_table(table, args.out)
    return (f"{config['model']} on {config['dataset']}: wrote {len(table)} rows ({what}) to {args.out}; "
            f"{seconds:.1f} s, {table['user'].nunique() / max(seconds, 1e-9):.1f} users/s, "
            f"{len(table) / max(seconds, 1e-9):.1f} rows/s")


def format_table(result: dict) -> str:
    who = f"user {result['user']}" if result["user"] is not None else "the given items"
    lines = [f"{result['model']} on {result['dataset']}: top {len(result['recommendations'])} for {who} "
             f"(history: last {len(result['history'])} of {result['history_length']} items)"]
    width = max([len(r["item"]) for r in result["recommendations"]] + [4])
    lines.append(f"{'rank':>4}  {'item':<{width}}  {'score':>9}  title")
    for r in result["recommendations"]:
        lines.append(f"{r['rank']:>4}  {r['item']:<{width}}  {r['score']:>9.4f}  {r['title'] or ''}".rstrip())
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """0, or 2 with one error line."""

    def command() -> int:
        args = _parse(argv, prog)
        batch = args.all_users or args.candidates is not None
        if batch and (args.out is None or args.json):
            raise EtegrecError("--all_users and --candidates write a file: pass --out NAME.csv or --out "
                               "NAME.parquet (and no --json)")
        if not batch and args.out is not None:
            raise EtegrecError("--out is for --all_users and --candidates; --user and --items print to the terminal")
        if batch:
            print(run_batch(args))
            return 0
        result = run(args)
        print(json.dumps(result, ensure_ascii=False) if args.json else format_table(result))
        return 0

    return handle(command)
