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
The command (options, output) is ``recbole_etegrec.commands.recommend``; this module is the library.
"""
import os
import sys
from typing import List, Sequence, Tuple

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


if __name__ == "__main__":  # the command: recbole_etegrec.commands.recommend
    from recbole_etegrec.commands.recommend import main

    sys.exit(main())
