"""Ask a trained checkpoint for recommendations.

    python -m recbole_etegrec.recommend --checkpoint saved/ETEGRec-<time>.pth --user 196
    python -m recbole_etegrec.recommend --checkpoint saved/TIGER-<time>.pth --items 242,302,377 --json

The history is either a user's (``--user TOKEN``: ALL of that user's interactions in the
dataset, train + valid + test, oldest first) or an ad-hoc list of original item tokens
(``--items``, e.g. ASINs, oldest first); either way only its last ``MAX_ITEM_LIST_LENGTH``
items are fed, as in training. ETEGRec/TIGER rank by the trie-constrained beam search (the score
is the beam's summed code log-probability; ``--topk`` above ``num_beams`` widens the beam to
``topk``); other RecBole sequential models (SASRec, ...) by their ``full_sort_predict`` scores.
Nothing is excluded by default (RecBole's sequential evaluation does not exclude the history
either); ``--exclude_history`` drops items of the history from the list.

Unknown item tokens are an error naming them; ``--skip_unknown`` drops them with a warning.
"""
import argparse
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType

from recbole_etegrec.errors import EtegrecError

TITLE_FIELDS = ("title", "movie_title", "name", "item_name")  # Amazon sets, ml-100k, others


def user_history(dataset, user_token: str) -> List[int]:
    """Internal item ids of every interaction of ``user_token``, oldest first (stable by time)."""
    uid_field, iid_field, time_field = dataset.uid_field, dataset.iid_field, dataset.time_field
    uid = dataset.field2token_id[uid_field].get(str(user_token))
    if uid is None:
        raise EtegrecError(f"unknown user '{user_token}' in dataset '{dataset.dataset_name}': pass a user "
                           f"token from its {uid_field} column, or use --items")
    feat = dataset.inter_feat
    rows = (feat[uid_field] == uid).nonzero(as_tuple=True)[0]
    if time_field and time_field in feat:
        rows = rows[torch.sort(feat[time_field][rows], stable=True).indices]
    items = [int(i) for i in feat[iid_field][rows]]
    list_field = iid_field + dataset.config["LIST_SUFFIX"]
    if list_field in feat and len(rows):
        # a built sequential dataset holds one row per target: the user's first item is never a
        # target, only the first history of the first row
        items.insert(0, int(feat[list_field][rows[0]][0]))
    return items


def item_ids(dataset, tokens: Sequence[str], skip_unknown: bool = False) -> Tuple[List[int], List[str]]:
    """(internal ids of the known ``tokens``, the unknown tokens); unknown ones raise unless skipped."""
    known = dataset.field2token_id[dataset.iid_field]
    unknown = [t for t in tokens if t not in known or known[t] == 0]  # id 0 is RecBole's [PAD]
    if unknown and not skip_unknown:
        raise EtegrecError(f"unknown item token(s) {', '.join(unknown)} in dataset '{dataset.dataset_name}': "
                           "use tokens of its item_id column, or pass --skip_unknown to drop them")
    return [known[t] for t in tokens if t not in unknown], unknown


def item_titles(config) -> dict:
    """{item token: title} from ``<data_path>/<dataset>.item`` when it has a title column; else {}.
    Read from the file itself: the project's protocol loads only the .inter columns."""
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if not os.path.isfile(path):
        return {}
    sep = config["field_separator"]
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        header = [c.partition(":")[0] for c in f.readline().rstrip("\n").split(sep)]
        field = next((name for name in TITLE_FIELDS if name in header), None)
        if field is None or config["ITEM_ID_FIELD"] not in header:
            return {}
        id_col, title_col = header.index(config["ITEM_ID_FIELD"]), header.index(field)
        titles = {}
        for line in f:
            values = line.rstrip("\n").split(sep)
            if len(values) == len(header):
                titles[values[id_col]] = values[title_col].strip()
    return titles


@torch.no_grad()
def recommend(model, config, history: Sequence[int], topk: int = 10,
              exclude_history: bool = False) -> List[Tuple[int, float]]:
    """Top-``topk`` (internal item id, score) for one history of internal item ids, oldest first."""
    if not history:
        raise EtegrecError("the history is empty: give at least one known item")
    if topk < 1:
        raise EtegrecError(f"--topk {topk} must be at least 1")
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise EtegrecError(f"{config['model']} is not a sequential model: recommend needs a history-based "
                           "model (ETEGRec, TIGER, SASRec, ...)")
    seen = set(history)
    history = list(history)[-config["MAX_ITEM_LIST_LENGTH"]:]
    item, device = config["ITEM_ID_FIELD"], config["device"]
    extra = len(seen) if exclude_history else 0
    if getattr(model, "uses_item_codes", False):
        inter = Interaction({item + config["LIST_SUFFIX"]: torch.tensor([history]),
                             config["ITEM_LIST_LENGTH_FIELD"]: torch.tensor([len(history)]),
                             item: torch.tensor([0])})  # dummy target: only the history is read
        codes, attention = model.history(inter.to(device))
        beams = model.generate(codes, attention, num_beams=max(model.num_beams, topk + extra),
                               use_cache=model.use_kv_cache)
        ranked = [(int(i), float(s)) for i, s in zip(beams.items[0], beams.scores[0]) if int(i) > 0]
    else:
        padded = history + [0] * (config["MAX_ITEM_LIST_LENGTH"] - len(history))  # RecBole pads right
        inter = Interaction({item + config["LIST_SUFFIX"]: torch.tensor([padded]),
                             config["ITEM_LIST_LENGTH_FIELD"]: torch.tensor([len(history)])}).to(device)
        scores = model.full_sort_predict(inter).view(-1).float().cpu()
        scores[0] = float("-inf")
        top = torch.topk(scores, min(topk + extra, len(scores) - 1))
        ranked = [(int(i), float(s)) for i, s in zip(top.indices, top.values)]
    if exclude_history:
        ranked = [(i, s) for i, s in ranked if i not in seen]
    return ranked[:topk]


def _parse(argv, prog: str = "python -m recbole_etegrec.recommend") -> argparse.Namespace:
    from recbole_etegrec.cli import ArgumentParser, parse_args

    parser = ArgumentParser(prog=prog, description="Recommend items with a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="saved/<Model>-<time>.pth from a training run")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user token: that user's whole history in the dataset")
    who.add_argument("--items", help="comma-separated original item tokens (e.g. ASINs), oldest first")
    parser.add_argument("--topk", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--skip_unknown", action="store_true", help="drop unknown --items with a warning")
    parser.add_argument("--exclude_history", action="store_true", help="never recommend history items")
    parser.add_argument("--verbose", action="store_true", help="show RecBole's INFO log on stderr")
    return parse_args(parser, argv, overrides=False)[0]


def run(args) -> dict:
    """Everything ``main`` prints, as a dict."""
    from recbole_etegrec.inference import load_data_and_model

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


def format_table(result: dict) -> str:
    who = f"user {result['user']}" if result["user"] is not None else "the given items"
    lines = [f"{result['model']} on {result['dataset']}: top {len(result['recommendations'])} for {who} "
             f"(history: last {len(result['history'])} of {result['history_length']} items)"]
    width = max([len(r["item"]) for r in result["recommendations"]] + [4])
    lines.append(f"{'rank':>4}  {'item':<{width}}  {'score':>9}  title")
    for r in result["recommendations"]:
        lines.append(f"{r['rank']:>4}  {r['item']:<{width}}  {r['score']:>9.4f}  {r['title'] or ''}".rstrip())
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m recbole_etegrec.recommend") -> int:
    """The ``recommend`` command (also ``recbole-etegrec recommend``): 0, or 2 with one error line."""
    from recbole_etegrec.cli import handle

    def command() -> int:
        args = _parse(argv, prog)
        result = run(args)
        print(json.dumps(result, ensure_ascii=False) if args.json else format_table(result))
        return 0

    return handle(command)


if __name__ == "__main__":
    sys.exit(main())
