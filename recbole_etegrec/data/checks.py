"""Checks on RecBole atomic files before RecBole reads them, so bad input fails with one clear line."""
import math
import os

from recbole_etegrec.errors import EtegrecError

_TYPES = {"token", "float", "token_seq", "float_seq"}


def check_inter_file(config) -> str:
    """Validate ``<data_path>/<dataset>.inter``: it exists, has a typed header, and every line has
    as many fields as the header with numbers where the header says float."""
    name, folder = config["dataset"], config["data_path"]
    path = os.path.join(folder, f"{name}.inter")
    if not os.path.isdir(folder):
        raise EtegrecError(
            f"unknown dataset '{name}': folder '{folder}' does not exist; prepare it with "
            f"`python -m recbole_etegrec.data.prepare SOURCE --name {name}` or set --data_path"
        )
    if not os.path.isfile(path):
        raise EtegrecError(
            f"dataset folder '{folder}' has no '{name}.inter': write the interactions there "
            f"(`python -m recbole_etegrec.data.prepare SOURCE --name {name}`)"
        )
    sep = config["field_separator"]
    lines = _read_lines(path)
    if not lines:
        raise EtegrecError(f"{path} is empty: line 1 must be a header like user_id:token<TAB>item_id:token")
    if lines[0].startswith("\ufeff"):
        raise EtegrecError(f"{path} starts with a UTF-8 byte-order mark, which RecBole reads into the first column's "
                           "name: save it as UTF-8 without BOM (e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' FILE)")
    header = lines[0].split(sep)
    types = []
    for column in header:
        field, _, ftype = column.partition(":")
        if ftype not in _TYPES:
            raise EtegrecError(
                f"{path}: line 1 header column '{column}' must look like name:type with type in "
                f"{sorted(_TYPES)}; fix the header"
            )
        types.append(ftype)
    names = [column.partition(":")[0] for column in header]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EtegrecError(f"{path}: line 1 names column '{twice[0]}' more than once; keep one column per name")
    fields = check_fields(config, path, dict(zip(names, types)))
    if not any(line.strip() for line in lines[1:]):
        raise EtegrecError(f"{path} has a header but no interactions: write at least one line per user")
    for lineno, line in enumerate(lines[1:], start=2):
        values = line.split(sep)
        if len(values) != len(header):
            raise EtegrecError(
                f"{path}: line {lineno} has {len(values)} fields but the header has "
                f"{len(header)}; fix or delete that line"
            )
        for value, ftype, column in zip(values, types, header):
            if ftype == "float" and value != "":
                try:
                    float(value)
                except ValueError:
                    raise EtegrecError(
                        f"{path}: line {lineno} column '{column}' holds '{value}', not a number; "
                        "fix or delete that line"
                    ) from None
    rows = [line.split(sep) for line in lines[1:]]
    for key, column in fields.items():
        check_values(path, [row[column] for row in rows], header[column], time=key == "TIME_FIELD")
    return path


def _key(config, key, default=None):
    """``config[key]`` for a RecBole Config or a plain dict (tests, prepare)."""
    try:
        value = config[key]
    except KeyError:
        return default
    return default if value is None else value


def check_fields(config, path, columns) -> dict:
    """The user and item columns exist as tokens, ``load_col`` reads them, and a time-ordered
    split has a float time column; returns ``{key: column index}`` of these fields."""
    fields = {"USER_ID_FIELD": _key(config, "USER_ID_FIELD", "user_id"),
              "ITEM_ID_FIELD": _key(config, "ITEM_ID_FIELD", "item_id")}
    ordered = str((_key(config, "eval_args", {}) or {}).get("order", "")).upper() == "TO"
    if ordered:
        fields["TIME_FIELD"] = _key(config, "TIME_FIELD", "timestamp")
    for key, field in fields.items():
        if field not in columns:
            fix = ("add a timestamp:float column (for rows already in time order, 0, 1, 2, ... keeps that order) "
                   "or set TIME_FIELD to your time column" if key == "TIME_FIELD" else f"set {key} to your column")
            why = " (eval_args.order TO orders each user's interactions by it)" if key == "TIME_FIELD" else ""
            raise EtegrecError(f"{path} has no '{field}' column ({key}){why}: {fix}; its header is "
                               f"{', '.join(f'{n}:{t}' for n, t in columns.items())}")
        wanted = "float" if key == "TIME_FIELD" else "token"
        if columns[field] != wanted:
            raise EtegrecError(f"{path}: column '{field}:{columns[field]}' ({key}) must be '{field}:{wanted}' "
                               f"({'ids are names, not numbers' if wanted == 'token' else 'times are numbers'}): "
                               "fix the header")
    load_col = _key(config, "load_col", {}) or {}
    read = load_col.get("inter") if isinstance(load_col, dict) else None
    if read is not None:
        missing = [f"'{field}' ({key})" for key, field in fields.items() if field not in read]
        if missing:
            raise EtegrecError(f"config key 'load_col' reads inter columns {list(read)} without {', '.join(missing)}: "
                               "add it to load_col.inter")
    return {key: list(columns).index(field) for key, field in fields.items()}


def check_values(path, values, column, time=False) -> None:
    """Every interaction has a user, an item and (``time``) a finite time: RecBole reads an empty id
    as one more user or item, and an empty, NaN or inf time sorts the row anywhere (NaN last: it
    would become the user's test target)."""
    bad = [lineno for lineno, value in enumerate(values, start=2) if not value.strip()
           or (time and not math.isfinite(float(value)))]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        what = "an empty, NaN or inf" if time else "an empty"
        raise EtegrecError(f"{path}: {len(bad)} lines have {what} '{column}' (lines {shown}): give every "
                           f"interaction {'a finite time' if time else 'a user and an item'} or delete those lines")


def _read_lines(path):
    """Lines without their newline; a non-UTF-8 byte is one error naming the line."""
    with open(path, "rb") as f:
        raw = f.read().split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines = []
    for lineno, line in enumerate(raw, start=1):
        try:
            lines.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as err:
            raise EtegrecError(
                f"{path}: line {lineno} is not UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}): "
                "re-encode the file as UTF-8"
            ) from None
    return lines
