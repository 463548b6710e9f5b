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

import numpy as np
import pandas as pd
import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType
from tqdm import tqdm

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import atomic_path, check_writable

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


def all_user_histories(dataset) -> Tuple[List[int], List[List[int]]]:
    """(user ids, their histories): for every user, what ``user_history`` returns for its token,
    from one sort of the interactions instead of one scan per user."""
    uid_field, iid_field, time_field = dataset.uid_field, dataset.iid_field, dataset.time_field
    feat = dataset.inter_feat
    uid, iid = feat[uid_field].numpy(), feat[iid_field].numpy()
    keys = (feat[time_field].numpy(), uid) if time_field and time_field in feat else (uid,)
    order = np.lexsort(keys)  # by user, then time; stable, as user_history's sort
    users, starts = np.unique(uid[order], return_index=True)
    histories = [list(map(int, part)) for part in np.split(iid[order], starts[1:])]
    list_field = iid_field + dataset.config["LIST_SUFFIX"]
    if list_field in feat:  # a built sequential dataset: each user's first item is only a history
        first_items = feat[list_field][:, 0].numpy()[order[starts]]
        histories = [[int(first)] + h for first, h in zip(first_items, histories)]
    return [int(u) for u in users], histories


def recommend(model, config, history: Sequence[int], topk: int = 10,
              exclude_history: bool = False) -> List[Tuple[int, float]]:
    """Top-``topk`` (internal item id, score) for one history of internal item ids, oldest first."""
    if not history:
        raise EtegrecError("the history is empty: give at least one known item")
    return recommend_batch(model, config, [history], topk, exclude_history)[0]


@torch.no_grad()
def recommend_batch(model, config, histories: Sequence[Sequence[int]], topk: int = 10,
                    exclude_history: bool = False) -> List[List[Tuple[int, float]]]:
    """``recommend`` for a batch of non-empty histories in one model call (``--all_users`` feeds it
    ``generate_chunk_size`` users at a time). A code model's beam widens to cover the longest
    exclusion of the batch (``topk`` plus the distinct history items) so that ``topk`` remain."""
    if topk < 1:
        raise EtegrecError(f"--topk {topk} must be at least 1")
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise EtegrecError(f"{config['model']} is not a sequential model: recommend needs a history-based "
                           "model (ETEGRec, TIGER, SASRec, ...)")
    seen = [set(h) for h in histories]
    inter = history_rows(config, histories).to(config["device"])
    if getattr(model, "uses_item_codes", False):
        extra = max(len(s) for s in seen) if exclude_history else 0
        codes, attention = model.history(inter)
        beams = model.generate(codes, attention, num_beams=max(model.num_beams, topk + extra),
                               use_cache=model.use_kv_cache)
        ranked = [[(int(i), float(s)) for i, s in zip(items, scores) if int(i) > 0]
                  for items, scores in zip(beams.items.tolist(), beams.scores.tolist())]
    else:
        scores = model.full_sort_predict(inter).view(len(histories), -1).float().cpu()
        scores[:, 0] = float("-inf")
        if exclude_history:
            for row, items in enumerate(seen):
                scores[row, list(items)] = float("-inf")
        top = torch.topk(scores, min(topk, scores.shape[1] - 1))
        ranked = [list(zip(map(int, i), map(float, s))) for i, s in zip(top.indices.tolist(), top.values.tolist())]
    if exclude_history:
        ranked = [[(i, s) for i, s in row if i not in items] for row, items in zip(ranked, seen)]
    return [row[:topk] for row in ranked]


def history_rows(config, histories) -> Interaction:
    """RecBole's sequential fields for histories (oldest first): the last ``MAX_ITEM_LIST_LENGTH``
    items of each, right-padded as RecBole pads them, and a dummy target (never read)."""
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    kept = [list(h)[-max_len:] for h in histories]
    item = config["ITEM_ID_FIELD"]
    return Interaction({item + config["LIST_SUFFIX"]: torch.tensor([h + [0] * (max_len - len(h)) for h in kept]),
                        config["ITEM_LIST_LENGTH_FIELD"]: torch.tensor([len(h) for h in kept]),
                        item: torch.zeros(len(kept), dtype=torch.long)})


@torch.no_grad()
def score_candidates(model, config, histories, parents, items) -> torch.Tensor:
    """Scores [N] of ``items`` [N] (internal ids) after ``histories[parents[n]]``: a code model's
    likelihood of the item's codes (``CodeSequenceMixin.score_items``, the ``predict`` of sampled
    evaluation); another sequential model's ``full_sort_predict`` score of the item."""
    inter = history_rows(config, histories).to(config["device"])
    parents, items = parents.to(config["device"]), items.to(config["device"])
    seq, lengths = inter[config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]], inter[config["ITEM_LIST_LENGTH_FIELD"]]
    if getattr(model, "uses_item_codes", False):
        return model.score_items(seq, lengths, parents, items).cpu()
    scores = torch.empty(len(items))
    batch = config["eval_batch_size"]
    for begin in range(0, len(histories), batch):
        rows = (parents >= begin) & (parents < begin + batch)
        full = model.full_sort_predict(inter[begin:begin + batch]).view(-1, model.n_items).float()
        scores[rows.cpu()] = full[parents[rows] - begin, items[rows]].cpu()
    return scores


# -- batch jobs: every user, or a candidate list, to a file --------------------------------------
TABLE_COLUMNS = ["user", "rank", "item", "score"]  # what --all_users and --candidates write


def recommend_all(model, config, dataset, topk=10, exclude_history=False, progress=True,
                  only=None) -> pd.DataFrame:
    """One row per (user, rank): every user's top-``topk`` from their whole history, users in the
    dataset's order (only the user ids in ``only``, when given). Users go through the model
    ``generate_chunk_size`` (code models) or ``eval_batch_size`` at a time, grouped by history
    length as the evaluation loaders group them."""
    users, histories = all_user_histories(dataset)
    if only is not None:
        keep = set(int(u) for u in only)
        users, histories = map(list, zip(*[(u, h) for u, h in zip(users, histories) if u in keep]))
    chunk = model.chunk_size if getattr(model, "uses_item_codes", False) else config["eval_batch_size"]
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    order = sorted(range(len(users)), key=lambda u: -min(len(histories[u]), max_len))
    ranked: List[List[Tuple[int, float]]] = [[] for _ in users]
    bar = tqdm(total=len(users), unit="user", desc="recommend", disable=not progress, file=sys.stderr)
    for begin in range(0, len(order), chunk):
        part = order[begin:begin + chunk]
        for u, row in zip(part, recommend_batch(model, config, [histories[u] for u in part], topk, exclude_history)):
            ranked[u] = row
        bar.update(len(part))
    bar.close()
    return _table(dataset, [(u, row) for u, row in zip(users, ranked)])


def rerank(model, config, dataset, pairs: pd.DataFrame, skip_unknown=False) -> Tuple[pd.DataFrame, List[str]]:
    """(the ``user``, ``item`` rows of ``pairs`` scored by ``score_candidates`` from each user's whole
    history and ranked per user, users in order of first appearance; warnings about dropped rows).
    Unknown users or items are one error naming them, or dropped with ``skip_unknown``."""
    user_ids = dataset.field2token_id[dataset.uid_field]
    item_ids_ = dataset.field2token_id[dataset.iid_field]
    known_user = pairs["user"].map(lambda t: user_ids.get(t, 0) > 0)
    known_item = pairs["item"].map(lambda t: item_ids_.get(t, 0) > 0)
    warnings = []
    for what, known in (("user", known_user), ("item", known_item)):
        unknown = list(dict.fromkeys(pairs[what][~known]))
        named = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        if unknown and not skip_unknown:
            raise EtegrecError(f"--candidates: {len(unknown)} unknown {what} token(s) in dataset "
                               f"'{dataset.dataset_name}' ({named}): use tokens of its columns, or pass "
                               "--skip_unknown to drop those rows")
        if unknown:
            warnings.append(f"skipped {int((~known).sum())} row(s) with unknown {what} token(s) {named}")
    pairs = pairs[known_user & known_item]
    if pairs.empty:
        raise EtegrecError("--candidates: no row left to score (every row names an unknown user or item)")
    users = list(dict.fromkeys(pairs["user"]))
    position = {token: n for n, token in enumerate(users)}
    all_users, all_histories = all_user_histories(dataset)
    history_of = dict(zip(all_users, all_histories))
    histories = [history_of[user_ids[token]] for token in users]
    parents = torch.tensor([position[t] for t in pairs["user"]])
    items = torch.tensor([item_ids_[t] for t in pairs["item"]])
    scores = score_candidates(model, config, histories, parents, items)
    ranked: List[List[Tuple[int, float]]] = [[] for _ in users]
    for p, i, sc in zip(parents.tolist(), items.tolist(), scores.tolist()):
        ranked[p].append((i, sc))
    ranked = [sorted(row, key=lambda pair: -pair[1]) for row in ranked]
    return _table(dataset, [(user_ids[t], row) for t, row in zip(users, ranked)]), warnings


def _table(dataset, ranked) -> pd.DataFrame:
    """[(user id, [(item id, score), ...]), ...] -> the TABLE_COLUMNS frame, with original tokens."""
    user_token, item_token = dataset.field2id_token[dataset.uid_field], dataset.field2id_token[dataset.iid_field]
    rows = [(str(user_token[u]), rank, str(item_token[i]), s)
            for u, row in ranked for rank, (i, s) in enumerate(row, start=1)]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def read_candidates(path) -> pd.DataFrame:
    """The ``user``, ``item`` columns of a CSV (header required; other columns are ignored), as
    strings: tokens are read verbatim, never as numbers (``007`` stays ``007``)."""
    if not os.path.isfile(path):
        raise EtegrecError(f"--candidates file '{path}' does not exist: pass a CSV with a header holding "
                           "user and item columns (user and item tokens)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise EtegrecError(f"--candidates file '{path}' is not a readable CSV ({str(err).splitlines()[0]}): "
                           "write one row per (user, item) under a header 'user,item'") from None
    missing = [c for c in ("user", "item") if c not in frame.columns]
    if missing:
        raise EtegrecError(f"--candidates file '{path}' has no {' and no '.join(missing)} column (its header: "
                           f"{', '.join(map(str, frame.columns)) or 'empty'}): name the columns user and item")
    if frame.empty:
        raise EtegrecError(f"--candidates file '{path}' has a header but no rows: add (user, item) rows")
    return frame[["user", "item"]].apply(lambda col: col.str.strip())


def check_table_path(path) -> None:
    """Before any model is loaded: a .csv or .parquet name in a writable folder."""
    if not path.endswith((".csv", ".parquet")):
        raise EtegrecError(f"--out '{path}' must end in .csv or .parquet (the format is taken from the name)")
    check_writable(os.path.dirname(os.path.abspath(path)), "out")


def write_table(frame: pd.DataFrame, path) -> None:
    """CSV, or Parquet for a ``.parquet`` name; the file appears only once complete."""
    with atomic_path(path) as tmp:
        if path.endswith(".parquet"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


if __name__ == "__main__":  # the command: recbole_etegrec.commands.recommend
    from recbole_etegrec.commands.recommend import main

    sys.exit(main())
