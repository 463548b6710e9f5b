"""Checks on RecBole atomic files before RecBole reads them, so bad input fails with one clear line."""
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
    return path


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
