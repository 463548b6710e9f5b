"""Turn a public recommendation dataset into RecBole atomic files ``OUT/NAME/NAME.inter`` (+ ``.item``).

    python -m recbole_etegrec.data.prepare ../shared/data/Instruments --name Instruments
    python -m recbole_etegrec.data.prepare raw/amazon2018 --name Instruments --kcore 5

The source kind is detected from what SOURCE (a folder, or one file in it) holds:

* LC-Rec/LETTER JSON, the format most semantic-ID papers publish: ``<X>.inter.json`` =
  ``{"<user index>": [item index, ...]}`` oldest first, optional ``<X>.item2id`` / ``<X>.user2id``
  (``ASIN<TAB>index`` / ``reviewerID<TAB>index``) and ``<X>.item.json`` (title, description, brand,
  categories). These files carry no timestamps, so the ``timestamp`` written is a **pseudo-time**:
  the position of the interaction in its user's sequence (0, 1, 2, ...). RecBole's time-ordered
  leave-one-out then holds out exactly the last two items of each sequence, as the papers do.
  The data is already filtered, so ``--kcore`` does not apply.
* Raw Amazon Review 2018: ``<Category>_5.json.gz`` (one review per line: reviewerID, asin,
  unixReviewTime) and optional ``meta_<Category>.json.gz``. Reviews are sorted by time (stable, so
  ties keep file order), a repeated (user, item) keeps its earliest review, then k-core filtering
  repeats until every user and item has at least ``--kcore`` interactions.

Items are written as ASINs when the source names them, users as reviewerIDs; otherwise the source
indices are the tokens. Text is made safe for RecBole's reader (pandas CSV): tabs/newlines become
spaces, ``"`` becomes ``''`` (a leading quote would start a quoted field), each category becomes one
token (spaces -> ``_``). All files are written to temp files next to the targets and moved into
place with ``os.replace``, so a rerun overwrites cleanly and a failure never leaves half a file.

A third file, ``NAME.yaml``, holds the dataset's own settings (``item_emb_source``: ``text`` when
the .item file has text, else ``sasrec``); the plugin's Config reads it after the project's
evaluation protocol ``properties/protocol.yaml`` (leave-one-out by time, full ranking, R/N@5,10,
history 20), so ``--dataset NAME`` runs under the README's protocol without hand-written YAML.
The command (options, output) is ``recbole_etegrec.commands.prepare``; this module is the library.
"""
import ast
import gzip
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from recbole_etegrec.errors import EtegrecError

INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float"]
ITEM_HEADER = ["item_id:token", "title:token_seq", "brand:token", "categories:token_seq",
               "description:token_seq"]
_FIX_SOURCE = ("pass a folder (or file) holding <X>.inter.json (LC-Rec JSON) or "
               "<Category>_5.json.gz (raw Amazon 2018)")


class TokenCheck:
    """Collects the ids a source holds that RecBole's atomic files cannot hold faithfully: missing
    (null), empty, not a string or integer (``true``, ``1.5``, a list), or holding a TAB, newline or
    carriage return (the field and line separators). ``raise_if_any`` then names the first record
    and the count: a run on a silently rewritten id would recommend another item."""

    def __init__(self, path):
        self.path, self.bad, self.first = path, 0, None

    def __call__(self, value, what, record) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            problem = f"is {json.dumps(value) if value is None or isinstance(value, bool) else repr(value)}"
        elif isinstance(value, str) and not value.strip():
            problem = "is empty"
        elif isinstance(value, str) and any(c in value for c in "\t\n\r"):
            problem = f"holds a TAB or line break ({value!r})"
        else:
            return str(value)
        self.bad += 1
        if self.first is None:
            self.first = f"{record}: {what} {problem}"
        return ""

    def raise_if_any(self) -> None:
        if self.bad:
            raise EtegrecError(f"{self.path}: {self.bad} records have an id RecBole cannot hold (first: {self.first}); "
                               "ids must be non-empty strings or integers without TAB or line breaks: fix the source "
                               "or drop those records")


def detect(source) -> Tuple[str, Path]:
    """Return ``(kind, path)`` with kind ``"lcrec"`` or ``"amazon"`` and path the main input file."""
    source = Path(source)
    if not source.exists():
        raise EtegrecError(f"source '{source}' does not exist; {_FIX_SOURCE}")
    if source.is_file():
        candidates = [source]
    else:
        candidates = sorted(source.glob("*.inter.json")) + sorted(source.glob("*_5.json.gz"))
    found = [p for p in candidates if p.name.endswith((".inter.json", "_5.json.gz"))]
    if not found:
        what = "is neither" if source.is_file() else "holds neither"
        raise EtegrecError(f"'{source}' {what} LC-Rec JSON nor raw Amazon 2018 data; {_FIX_SOURCE}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise EtegrecError(f"folder '{source}' holds several sources ({names}); pass one file as SOURCE")
    return ("lcrec" if found[0].name.endswith(".inter.json") else "amazon"), found[0]


def _load_json(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EtegrecError(f"{path}: malformed JSON ({err}); re-download or repair the file") from None


def _load_index_map(path):
    """Read ``token<TAB>index`` lines into {index: token} (LC-Rec's item2id / user2id)."""
    mapping = {}
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[1].strip().isdigit():
                if line.strip():
                    raise EtegrecError(f"{path}: line {lineno} is not 'TOKEN<TAB>INDEX'; fix or delete it")
                continue
            mapping[int(parts[1])] = parts[0]
    return mapping


def _text(value):
    """One line of text: lists joined, whitespace collapsed, double quotes made harmless."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return " ".join(str(value).split()).replace('"', "''")


def _categories(value):
    """A category list (or LC-Rec's comma-joined string) as space-separated one-word tokens."""
    if isinstance(value, str):
        value = value.split(",")
    return " ".join(t for t in (_text(c).replace(" ", "_") for c in (value or [])) if t)


def _item_row(meta):
    return {"title": _text(meta.get("title")), "brand": _text(meta.get("brand")),
            "categories": _categories(meta.get("categories", meta.get("category"))),
            "description": _text(meta.get("description"))}


def read_lcrec(path) -> Tuple[List[Tuple[str, str, int]], Optional[Dict[str, Dict[str, str]]]]:
    """LC-Rec JSON -> (rows of (user, item, pseudo-time), {item: text fields} or None)."""
    stem = str(path)[: -len(".inter.json")]
    seqs = _load_json(path)
    if not isinstance(seqs, dict) or not all(isinstance(s, list) for s in seqs.values()):
        raise EtegrecError(f"{path}: expected {{\"<user index>\": [item index, ...]}}; "
                           "this is not an LC-Rec interaction file")
    items = _load_index_map(stem + ".item2id") if os.path.isfile(stem + ".item2id") else None
    users = _load_index_map(stem + ".user2id") if os.path.isfile(stem + ".user2id") else None
    rows, name, check = [], Path(stem).name, TokenCheck(path)
    for user, seq in seqs.items():
        if users is not None and not (user.isdigit() and int(user) in users):
            raise EtegrecError(f"{path}: user '{user}' is not an index listed in {name}.user2id; "
                               "fix the source files")
        token = check(users[int(user)] if users is not None else user, "the user", f"user {json.dumps(user)}")
        for pos, item in enumerate(seq):  # pos is the pseudo-time: the files carry no timestamps
            if isinstance(item, bool) or not isinstance(item, int):  # JSON true is a Python int
                check(item, f"item {pos}", f"user {json.dumps(user)}")
                continue
            if items is not None and item not in items:
                raise EtegrecError(f"{path}: user '{user}' has item '{item}' that is not an index "
                                   f"listed in {name}.item2id; fix the source files")
            rows.append((token, check(items[item], f"item {pos}", f"user {json.dumps(user)}")
                         if items is not None else str(item), pos))
    check.raise_if_any()
    text = None
    if os.path.isfile(stem + ".item.json"):
        meta = _load_json(stem + ".item.json")
        if not isinstance(meta, dict) or not all(isinstance(m, dict) for m in meta.values()):
            raise EtegrecError(f"{stem}.item.json: expected {{\"<item index>\": {{\"title\": ...}}}}")
        used = {r[1] for r in rows}  # only items that occur: extra ones would grow RecBole's catalogue
        text = {}
        for index in sorted(meta, key=lambda k: int(k) if k.isdigit() else -1):
            token = items.get(int(index), index) if items and index.isdigit() else index
            if token in used:
                text[token] = _item_row(meta[index])
    return rows, text


def _read_gz_lines(path, required):
    """Yield one dict per line of a gzipped JSON-lines file; old meta files hold Python literals."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(tqdm(f, desc=path.name, unit=" lines", disable=None), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    try:
                        record = ast.literal_eval(line)
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        raise EtegrecError(f"{path}: line {lineno} is neither JSON nor a Python "
                                           "dict; re-download the file") from None
                missing = [k for k in required if not isinstance(record, dict) or k not in record]
                if missing:
                    raise EtegrecError(f"{path}: line {lineno} lacks {', '.join(missing)}; this is "
                                       "not an Amazon 2018 file, or it is damaged")
                yield lineno, record
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise EtegrecError(f"{path}: cannot read it as gzip text ({err}); re-download it") from None


def read_amazon(path, kcore) -> Tuple[List[Tuple[str, str, int]], Optional[Dict[str, Dict[str, str]]]]:
    """Raw Amazon 2018 -> (rows of (user, item, unix time), {item: text fields} or None)."""
    rows, check = [], TokenCheck(path)
    for lineno, r in _read_gz_lines(path, ("reviewerID", "asin", "unixReviewTime")):
        user, item = check(r["reviewerID"], "reviewerID", f"line {lineno}"), check(r["asin"], "asin", f"line {lineno}")
        try:
            time = int(r["unixReviewTime"])
        except (TypeError, ValueError):
            raise EtegrecError(f"{path}: line {lineno}: unixReviewTime '{r['unixReviewTime']}' is not an "
                               "integer time; repair the file") from None
        if user and item:
            rows.append((user, item, time))
    check.raise_if_any()
    user_rank = {}
    for user, _, _ in rows:  # users are written in order of first appearance in the file
        user_rank.setdefault(user, len(user_rank))
    rows.sort(key=lambda r: r[2])  # stable: ties keep file order
    seen, unique = set(), []
    for r in rows:  # after the sort, the first copy of a (user, item) is the earliest one
        if (r[0], r[1]) not in seen:
            seen.add((r[0], r[1]))
            unique.append(r)
    rows = unique
    while True:  # removing a user can drop an item below k and vice versa: repeat until stable
        users, items = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= kcore and items[r[1]] >= kcore]
        if len(kept) == len(rows):
            break
        rows = kept
    if not rows:
        raise EtegrecError(f"{path}: {kcore}-core filtering removed every interaction; lower --kcore")
    rows.sort(key=lambda r: user_rank[r[0]])  # stable: each user stays chronological
    meta_path = path.with_name("meta_" + path.name[: -len("_5.json.gz")] + ".json.gz")
    if not meta_path.is_file():
        return rows, None
    used, text = {r[1] for r in rows}, {}
    for _, meta in _read_gz_lines(meta_path, ("asin",)):
        if meta["asin"] in used and meta["asin"] not in text:
            text[meta["asin"]] = _item_row(meta)
    ordered = {}
    for _, item, _ in rows:  # every kept item gets a row, empty where the meta file lacks it
        ordered.setdefault(item, text.get(item, _item_row({})))
    return rows, ordered


def _write_all(files):
    """Write {path: lines} to temp files first and only then move them all into place."""
    temps = {}
    try:
        for path, lines in files.items():
            tmp = temps[path] = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same filesystem
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.writelines(line + "\n" for line in lines)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except OSError as err:
        folder = next(iter(files)).parent
        raise EtegrecError(f"cannot write to '{folder}' ({err}); choose a writable --out") from None
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def prepare(source, name, out="dataset", kcore=5) -> dict:
    """Convert SOURCE into ``OUT/NAME/NAME.inter`` (+ ``.item`` when there is item text) and
    ``OUT/NAME/NAME.yaml`` (``item_emb_source``: ``text`` when there is item text, else ``sasrec``)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise EtegrecError(f"--name '{name}' must be a plain dataset name such as Instruments")
    if kcore < 1:
        raise EtegrecError(f"--kcore {kcore} must be at least 1")
    kind, path = detect(source)
    rows, text = read_lcrec(path) if kind == "lcrec" else read_amazon(path, kcore)
    if not rows:
        raise EtegrecError(f"{path}: no interactions found; check the source")
    folder = Path(out) / name
    inter_path, item_path = folder / f"{name}.inter", folder / f"{name}.item"
    config_path = folder / f"{name}.yaml"
    files = {inter_path: ["\t".join(INTER_HEADER)] + [f"{u}\t{i}\t{t}" for u, i, t in rows]}
    if text is not None:
        files[item_path] = ["\t".join(ITEM_HEADER)] + [
            "\t".join([token] + [row[h.split(":")[0]] for h in ITEM_HEADER[1:]])
            for token, row in text.items()]
    has_text = text is not None and any(any(row.values()) for row in text.values())
    files[config_path] = dataset_config_lines(name, has_text)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EtegrecError(f"cannot create '{folder}' ({err.strerror}); choose a writable --out") from None
    _write_all(files)
    if text is None and item_path.exists():
        item_path.unlink()  # a stale .item from an earlier source would not match the new items
    return {"users": len({r[0] for r in rows}), "items": len({r[1] for r in rows}),
            "interactions": len(rows), "inter_path": str(inter_path),
            "item_path": str(item_path) if text is not None else None,
            "config_path": str(config_path), "item_emb_source": "text" if has_text else "sasrec"}


def dataset_config_lines(name, has_text) -> List[str]:
    """``<name>.yaml`` beside the atomic files: the dataset's own settings, read by the plugin's
    Config after the evaluation protocol (``properties/protocol.yaml``), so a prepared dataset runs
    under the project's protocol with the right tokenizer input and no hand-written YAML."""
    source = ("text           # (str) The .item file has item text: MiniLM embeddings of text_fields."
              if has_text else
              "sasrec         # (str) No item text: embeddings of a SASRec trained on the training split.")
    return [f"# {name}: written by `python -m recbole_etegrec.data.prepare`; read by recbole_etegrec's Config",
            "# after properties/protocol.yaml. --config_files and --key=value still override it.",
            f"item_emb_source: {source}"]


if __name__ == "__main__":  # the command: recbole_etegrec.commands.prepare
    from recbole_etegrec.commands.prepare import main

    sys.exit(main())
