"""Checks on RecBole atomic files before RecBole reads them, so bad input fails with one clear line."""
import os

from recbole_etegrec.errors import EtegrecError

_TYPES = {"token", "float", "token_seq", "float_seq"}


def check_inter_file(config):
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
    sep = config["field_separator"] or "\t"
    with open(path, "r", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split(sep)
        types = []
        for column in header:
            field, _, ftype = column.partition(":")
            if ftype not in _TYPES:
                raise EtegrecError(
                    f"{path}: line 1 header column '{column}' must look like name:type with type in "
                    f"{sorted(_TYPES)}; fix the header"
                )
            types.append(ftype)
        for lineno, line in enumerate(f, start=2):
            values = line.rstrip("\n").split(sep)
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
