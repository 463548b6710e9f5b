"""Run several models on one dataset and report them side by side (Markdown, CSV, PNG).

A benchmark folder can be filled model by model: a run into a folder that already holds results
(results.csv + run.yaml) keeps the rows of the models it does not run, replaces those it runs, and
rewrites every table, plot and curve from the merged set. Each model's per-user test values are kept
in ``per_user/<label>.csv``, so the paired bootstrap behind the ``delta_*`` columns (each model
against the best other one) can be recomputed for any merged set.
"""
import csv
import os
import re
import subprocess
import sys
import time
import traceback
from typing import Dict, List, Tuple

import numpy as np
import yaml

from recbole_etegrec import distributed
from recbole_etegrec.bootstrap import paired_bootstrap
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import atomic_path, atomic_write, check_writable, remove_stale_tmp
from recbole_etegrec.quick_start import REPORT_METRICS, run
from recbole_etegrec.registry import properties_dir

DELTA_METRICS = ("recall@10", "ndcg@10")  # the margin to the best other model, with its 95% interval
COLUMNS = (
    [f"valid_{m}" for m in REPORT_METRICS] + [f"test_{m}" for m in REPORT_METRICS]
    + [f"delta_{m}" for m in DELTA_METRICS]
    + ["epochs", "best_epoch", "train_time_s", "eval_time_s", "wall_time_s", "params", "peak_mem_mb"]
)
PER_USER_DIR = "per_user"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def result_row(result) -> dict:
    if result.get("error"):
        return {"model": result["model"], "status": f"failed: {result['error']}"}
    row = {"model": result["model"], "status": "ok"}
    for split in ("valid", "test"):
        for metric in REPORT_METRICS:
            row[f"{split}_{metric}"] = result[f"{split}_result"].get(metric)
    row.update(epochs=result.get("epochs_trained"), best_epoch=result.get("best_epoch"),
               train_time_s=round(result["train_time"], 1), eval_time_s=round(result["eval_time"], 1),
               wall_time_s=round(result["wall_time"], 1) if result.get("wall_time") is not None else None,
               params=result["params"], peak_mem_mb=round(result["peak_mem_mb"], 1))
    return row


def convergence(result) -> dict:
    """A model's entry under ``models:`` in run.yaml: how long it trained and where it stopped."""
    if result.get("error"):
        return {"status": f"failed: {result['error']}"}
    info = {"epochs_trained": result.get("epochs_trained"), "best_epoch": result.get("best_epoch"),
            "train_minutes": round(result["train_time"] / 60, 1),
            "wall_minutes": round(result.get("wall_time", result["train_time"]) / 60, 1)}
    if result.get("finetune_start") is not None:
        info["finetune_start_epoch"] = result["finetune_start"]
    if result.get("tokenizer_health"):  # ETEGRec: the start and every tokenizer epoch, one line each
        info["tokenizer_health"] = [health_line(h) for h in result["tokenizer_health"]]
    return info


def health_line(health) -> dict:
    """One tokenizer health record as plain YAML numbers (rounded: run.yaml is read by people)."""
    line = {"epoch": health["epoch"], "collision_rate": round(health["collision_rate"], 4),
            "utilization": [round(u, 3) for u in health["utilization"]],
            "entropy": [round(h, 3) for h in health["entropy"]]}
    if "items_recoded" in health:
        line["items_recoded"] = round(health["items_recoded"], 4)
    if health.get("sia_vq_grad_ratio"):
        line["sia_vq_grad_ratio"] = [float(f"{r:.3g}") for r in health["sia_vq_grad_ratio"]]
    if health.get("undone"):
        line["undone"] = health["undone"]
    return line


def markdown_table(rows, dataset) -> str:
    head = ["model"] + [c.replace("recall@", "R@").replace("ndcg@", "N@") for c in COLUMNS] + ["status"]
    lines = [f"Dataset: {dataset}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"]] + [_fmt(row.get(c)) for c in COLUMNS] + [row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value):
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) and value < 1 else str(value)


def load_budget(dataset, path=None) -> dict:
    """The benchmark's compute budget: ``properties/benchmark/<dataset>.yaml`` (or ``path``: a
    file, or the name of one in ``properties/benchmark/``) holds ``common:`` keys for every model
    and one section per model (e.g. ``SASRec: {epochs: 30}``). A section with a ``model:`` key is
    a variant: its name labels the row, ``model`` is what runs (``ETEGRec w/o SIA: {model: ETEGRec,
    rec_kl_loss: 0, id_kl_loss: 0}``)."""
    explicit = path is not None
    if explicit and not path.endswith((".yaml", ".yml")):
        path = os.path.join(properties_dir(), "benchmark", f"{path}.yaml")
    path = path or os.path.join(properties_dir(), "benchmark", f"{dataset}.yaml")
    if not os.path.isfile(path):
        if explicit:
            raise EtegrecError(f"benchmark budget '{path}' does not exist: give --budget a file or the name of one "
                               "in properties/benchmark/")
        return {}
    with open(path) as f:
        try:
            budget = yaml.safe_load(f) or {}
        except yaml.YAMLError:
            raise EtegrecError(f"benchmark budget '{path}' is not valid YAML: fix the syntax") from None
    if not isinstance(budget, dict) or not all(isinstance(v, dict) for v in budget.values()):
        raise EtegrecError(f"benchmark budget '{path}' must map `common` and model names to key: value sections")
    return budget


def run_models(models, dataset, config_files=None, config_dict=None, cmd_args=None,
               benchmark_dir=None, budget=None) -> List[dict]:
    """Run ``models`` one after another; a model that fails is reported and the rest still run.

    With ``benchmark_dir`` the dataset's benchmark budget applies on top of the property files and
    ``config_files``; command-line ``--key=value`` still wins. A folder that already holds results
    on ``dataset`` keeps the rows of models not in ``models`` and gets the others replaced. A single
    model's bad input (unknown model, missing data, bad config) is raised as is.
    """
    budget = load_budget(dataset, budget) if benchmark_dir else {}
    board = Board()
    main_process = distributed.is_main_process()  # under torchrun / accelerate: rank 0 prints and writes

    def say(text):
        if main_process:
            print(text, flush=True)

    if benchmark_dir and main_process:
        check_writable(benchmark_dir, "benchmark_dir")  # found before the first model trains
        board = read_board(benchmark_dir, dataset, drop=models)  # before run.yaml is rewritten
        provenance = write_provenance(benchmark_dir, dataset, budget, config_files, config_dict, cmd_args,
                                      models=board.ordered(board.entries))
    board.order += [label for label in models if label not in board.order]
    results = []
    for label in models:
        section = dict(budget.get(label, {}))
        model = section.pop("model", label)  # a variant section names the model it runs
        model_dict = {**budget.get("common", {}), **section, **(config_dict or {})}
        say(f"=== [{len(results) + 1}/{len(models)}] {label} on {dataset}")
        started = time.strftime(TIME_FORMAT)
        try:
            result = dict(run(model, dataset, config_files, model_dict or None, cmd_args), model=label)
        except Exception as err:  # a crash in one model must not hide the others' results
            if len(models) == 1:
                raise
            if not isinstance(err, EtegrecError):  # user errors are one clear line already
                traceback.print_exc()
            result = {"model": label, "error": f"{type(err).__name__}: {err}"}
        results.append(result)
        board.add(result)
        # rewrite the table after every model: a long benchmark shows (and keeps) what is done.
        # The margins come first: a folder mixing two splits stops here, before any file is written
        rows, margins = board.table()
        table = markdown_table(rows, dataset)
        # the finished row reaches the log whatever happens
        say(markdown_table([r for r in rows if r["model"] == label], dataset).splitlines()[-1])
        if benchmark_dir and main_process:
            board.entries[label] = {**convergence(result), **model_provenance(provenance, started, budget, label)}
            failures = write_per_user(board, label, benchmark_dir)
            failures += write_benchmark(rows, table, dataset, benchmark_dir, board.ordered(board.curves), margins)
            provenance["models"] = board.ordered({k: v for k, v in board.entries.items() if k in board.rows})
            try:
                _write_yaml(os.path.join(benchmark_dir, "run.yaml"), provenance)
            except (EtegrecError, OSError) as err:
                failures.append(str(err))
            for failure in failures:
                print(f"error: {failure}", file=sys.stderr, flush=True)
                result.setdefault("write_error", failure)
    say(table)
    return results


class Board:
    """What a benchmark table is written from: the rows in table order and, per row, what
    results.csv does not hold (per-user test values, validation curve, run.yaml entry). Filled
    from the folder's earlier runs (``read_board``), then model by model (``add``)."""

    def __init__(self):
        self.order: List[str] = []  # labels in table order: an earlier run's order, then new labels
        self.rows: Dict[str, dict] = {}
        self.per_user: Dict[str, dict] = {}
        self.curves: Dict[str, list] = {}
        self.entries: Dict[str, dict] = {}

    def add(self, result) -> None:
        label = result["model"]
        self.rows[label] = result_row(result)
        for store, value in ((self.per_user, None if result.get("error") else result.get("test_per_user")),
                             (self.curves, result.get("valid_history"))):
            store.pop(label, None)
            if value:
                store[label] = value

    def ordered(self, store) -> dict:
        return {label: store[label] for label in self.order if label in store}

    def table(self) -> Tuple[List[dict], dict]:
        """The rows with their ``delta_*`` cells, and the margins behind them (for the plot)."""
        rows = list(self.ordered(self.rows).values())
        found = margins(rows, self.per_user)
        return [with_margin_cells(row, found.get(row["model"], {})) for row in rows], found


def model_provenance(provenance, started, budget, label) -> dict:
    """A row's own origin in run.yaml: a merged table mixes rows from several invocations."""
    return {"dataset": provenance["dataset"], "commit": provenance["commit"], "command": provenance["command"],
            "started": started, "budget": model_budget(budget, label)}


def model_budget(budget, label) -> dict:
    """The budget keys one model ran under: ``common`` and its own section (a variant's ``model`` too)."""
    return {**(budget.get("common") or {}), **(budget.get(label) or {})}


# -- margins: each model against the best other one, paired over the test users -------------------
def margins(rows, per_user) -> Dict[str, Dict[str, tuple]]:
    """``{label: {metric: (diff, lo, hi, other)}}`` for DELTA_METRICS: the row's per-user test values
    minus those of the best other ok row (by that metric's test value) with per-user values, and
    the 95% paired-bootstrap interval of that difference. The best model's margin is over the
    runner-up (positive), every other model's is to the best (negative or around 0)."""
    scored = [r for r in rows if r["status"] == "ok" and r["model"] in per_user]
    _check_same_users(scored, per_user)
    found: Dict[str, Dict[str, tuple]] = {}
    for metric in DELTA_METRICS:
        candidates = [r for r in scored if r.get(f"test_{metric}") is not None and metric in per_user[r["model"]]]
        for row in candidates:
            others = [other for other in candidates if other is not row]
            if not others:
                continue
            best = max(others, key=lambda other: other[f"test_{metric}"])  # the first of equals
            a, b = _paired(per_user[row["model"]], per_user[best["model"]], metric)
            found.setdefault(row["model"], {})[metric] = (*paired_bootstrap(a, b), best["model"])
    return found


def _check_same_users(rows, per_user):
    """Rows of one table must come from one split; a folder filled by runs with different data
    settings (``--debug``, ``debug_samples``, a changed dataset) would pair different users."""
    if not rows:
        return
    first = rows[0]["model"]
    reference = np.sort(per_user[first]["users"])
    for row in rows[1:]:
        users = per_user[row["model"]]["users"]
        if len(users) != len(reference) or not np.array_equal(np.sort(users), reference):
            raise EtegrecError(
                f"the test users of '{row['model']}' ({len(users)}) and '{first}' ({len(reference)}) differ: one "
                "benchmark table needs one split; rerun both with the same data settings (--debug, debug_samples) "
                "into this folder, or use another --benchmark_dir")


def _paired(a, b, metric) -> Tuple[np.ndarray, np.ndarray]:
    """``a``'s and ``b``'s values of ``metric`` in one user order (the same set, checked above)."""
    if np.array_equal(a["users"], b["users"]):
        return a[metric], b[metric]
    order_a, order_b = np.argsort(a["users"], kind="stable"), np.argsort(b["users"], kind="stable")
    return a[metric][order_a], b[metric][order_b]


def with_margin_cells(row, found) -> dict:
    """``delta_recall@10``: ``+0.0046 [+0.0012, +0.0081] vs SASRec`` (difference, 95% interval, against)."""
    cells = {f"delta_{m}": f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}] vs {other}" for m, (d, lo, hi, other) in found.items()}
    return {**row, **cells}


# -- a folder's earlier results: read back to be merged -------------------------------------------
def read_board(out_dir, dataset, drop=()) -> Board:
    """The rows (and their per-user values, curves and run.yaml entries) an earlier run left in
    ``out_dir``, without those of ``drop`` (the models this run replaces: dropped at once, so a
    rerun of every model on a new split is never paired with the old one); empty for a new folder.
    A folder of another dataset, or one whose files cannot be read back, is one clear error."""
    board = Board()
    results_csv = os.path.join(out_dir, "results.csv")
    if not os.path.isfile(results_csv):
        return board
    info = _read_run_yaml(out_dir, dataset)
    rows = _read_rows(results_csv)
    board.order = [row["model"] for row in rows]  # a replaced model keeps its place in the table
    entries = info.get("models") or {}
    for row in rows:
        label = row["model"]
        # every row keeps its entry until the table is rewritten: run.yaml is rewritten at the start
        entry = entries.get(label)
        board.entries[label] = _backfilled(dict(entry) if isinstance(entry, dict) else {}, info, label)
        if label in drop:
            continue
        board.rows[label] = row
        per_user_file = board.entries[label].get("per_user_file")
        if row["status"] == "ok" and per_user_file:
            board.per_user[label] = read_per_user(os.path.join(out_dir, per_user_file))
    board.curves = {m: hist for m, hist in _read_curves(out_dir).items() if m in board.rows}
    return board


def _read_run_yaml(out_dir, dataset) -> dict:
    path = os.path.join(out_dir, "run.yaml")
    fresh = "or remove results.csv and run.yaml to start the folder afresh"
    if not os.path.isfile(path):
        raise EtegrecError(f"'{out_dir}' holds results.csv but no run.yaml, so its rows cannot be traced or merged: "
                           f"restore run.yaml, {fresh}")
    try:
        with open(path) as f:
            info = yaml.safe_load(f)
    except yaml.YAMLError:
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("models") or {}, dict):
        raise EtegrecError(f"'{path}' is not a benchmark run.yaml (a mapping with `dataset` and `models`): fix it, "
                           f"{fresh}")
    owners = [("run.yaml", info.get("dataset"))] + [
        (f"its row '{label}'", entry.get("dataset")) for label, entry in info["models"].items()
        if isinstance(entry, dict) and entry.get("dataset") is not None]
    for owner, other in owners:
        if other != dataset:
            raise EtegrecError(f"benchmark_dir '{out_dir}' holds results on dataset '{other}' ({owner}), not "
                               f"'{dataset}': give --benchmark_dir a folder of its own for {dataset}")
    return info


def _read_rows(path) -> List[dict]:
    """results.csv back into ``result_row``'s types (the ``delta_*`` cells are recomputed)."""
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    labels = [row.get("model") for row in table]
    if not table or None in labels or "" in labels or len(set(labels)) != len(labels) or "status" not in table[0]:
        raise EtegrecError(f"'{path}' is not a benchmark table (one row per model, `model` and `status` columns): "
                           "restore it, or remove results.csv and run.yaml to start the folder afresh")
    return [{"model": row["model"], "status": row["status"],
             **{c: _parse_cell(row.get(c), path, c) for c in COLUMNS if not c.startswith("delta_")}}
            for row in table]


def _parse_cell(text, path, column):
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise EtegrecError(f"'{path}' column {column} holds '{text}', not a number: restore the file, or remove "
                       "results.csv and run.yaml to start the folder afresh")


def _backfilled(entry, info, label) -> dict:
    """Entries written before rows carried their own origin get the run's (the one that wrote them)."""
    for key in ("dataset", "commit", "command", "started"):
        entry.setdefault(key, info.get(key))
    entry.setdefault("budget", model_budget(info.get("budget") or {}, label))
    return entry


def _read_curves(out_dir) -> Dict[str, list]:
    path = os.path.join(out_dir, "valid_curve.csv")
    curves: Dict[str, list] = {}
    if not os.path.isfile(path):
        return curves
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch, score = _parse_cell(row.get("epoch"), path, "epoch"), _parse_cell(row.get("valid_score"), path,
                                                                                    "valid_score")
            if row.get("model") and epoch is not None and score is not None:
                curves.setdefault(row["model"], []).append((epoch, float(score)))
    return curves


# -- per-user test values: per_user/<label>.csv ---------------------------------------------------
def write_per_user(board, label, out_dir) -> List[str]:
    """Write ``label``'s per-user test values and name the file in its run.yaml entry; a model
    without them (failed, or no per-user evaluation) loses any file an earlier run left."""
    per_user = board.per_user.get(label)
    name = _per_user_name(board, label)
    path = os.path.join(out_dir, name)
    try:
        if not per_user:
            if os.path.isfile(path):
                os.remove(path)  # a failed rerun must not leave the earlier run's values to be paired
            return []
        metrics = [m for m in REPORT_METRICS if m in per_user]
        with atomic_write(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["user_id", *metrics])
            writer.writerows(zip(per_user["users"].tolist(), *(per_user[m].tolist() for m in metrics)))
    except (EtegrecError, OSError) as err:
        return [str(err)]
    board.entries[label]["per_user_file"] = name
    return []


def _per_user_name(board, label) -> str:
    """``per_user/<label>.csv``, the label made file-safe (a variant may be 'ETEGRec w/o SIA');
    a name another row already uses gets a number."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model"
    taken = {e.get("per_user_file") for other, e in board.entries.items() if other != label}
    name, n = f"{PER_USER_DIR}/{base}.csv", 1
    while name in taken:
        n += 1
        name = f"{PER_USER_DIR}/{base}-{n}.csv"
    return name


def read_per_user(path) -> dict:
    """``{"users": tokens, metric: values}`` as ``quick_start.per_user_metrics`` returns them."""
    fix = "rerun that model into this folder, or remove its row's per_user_file from run.yaml"
    try:
        with open(path, newline="") as f:
            table = list(csv.reader(f))
        head, body = table[0], table[1:]
        if head[0] != "user_id" or not body or any(len(line) != len(head) for line in body):
            raise ValueError
        columns = list(zip(*body))
        per_user = {"users": np.asarray(columns[0], dtype=str)}
        per_user.update({m: np.asarray(col, dtype=np.float64) for m, col in zip(head[1:], columns[1:])})
    except (OSError, IndexError, ValueError):
        raise EtegrecError(f"cannot read per-user test values from '{path}' (user_id + one column per metric): "
                           f"{fix}") from None
    if len(np.unique(per_user["users"])) != len(per_user["users"]):
        raise EtegrecError(f"'{path}' lists a user twice: {fix}")
    return per_user


def code_version(root, out_dir) -> str:
    """The checkout's short commit, marked when a tracked file differs from it. Benchmark results
    (this folder's earlier rows, merged model by model, and every ``benchmarks/<folder>/``) are not
    code changes; the measurement scripts in ``benchmarks/`` are."""
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        own = os.path.relpath(os.path.abspath(out_dir), root)
        results = [":(exclude,glob)benchmarks/*/**"] + ([f":(exclude){own}"] if not own.startswith("..") else [])
        paths = ["--", ".", *results]
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", *paths],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty else "")


def write_provenance(out_dir, dataset, budget, config_files, config_dict, cmd_args, models=None) -> dict:
    """``DIR/run.yaml``: the exact command, code version and budget behind the tables; ``models``
    (the entries of rows kept from earlier runs) is written at once, so they survive a crash."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    info = {
        "command": command_line(),
        "dataset": dataset, "commit": code_version(root, out_dir), "started": time.strftime(TIME_FORMAT),
        "cpu_cores": os.cpu_count(), "config_files": config_files, "config_dict": config_dict,
        "cmd_args": cmd_args, "budget": budget,
    }
    if models:
        info["models"] = dict(models)
    _write_yaml(os.path.join(out_dir, "run.yaml"), info)
    return info


def _write_yaml(path, info):
    with atomic_write(path, "w") as f:
        yaml.safe_dump(info, f, sort_keys=False)


def write_benchmark(rows, table, dataset, out_dir, curves=None, margins=None) -> List[str]:
    """Write results.md, results.csv, results.png (with ``margins``, see ``margins()``) and, from
    ``curves`` (``{label: [(epoch, valid score)]}``), valid_curve.csv / valid_curve.png, each
    atomically and independently (one failing write never stops the others, nor the remaining
    models); returns the failures."""
    failures = []
    curves = curves or {}
    curve_path = os.path.join(out_dir, "valid_curve.csv")
    if os.path.isdir(out_dir):
        remove_stale_tmp(out_dir)

    def markdown():
        with atomic_write(os.path.join(out_dir, "results.md"), "w") as f:
            f.write(table + "\n")

    def table_csv():
        with atomic_write(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["model", "status", *COLUMNS])
            writer.writeheader()
            writer.writerows(rows)

    def plot():
        plot_test_metrics(rows, dataset, os.path.join(out_dir, "results.png"), margins)

    def curve_csv():
        with atomic_write(curve_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["model", "epoch", "valid_score"])
            writer.writerows((model, epoch, score) for model, hist in curves.items() for epoch, score in hist)

    def curve_plot():
        plot_valid_curves(curves, dataset, os.path.join(out_dir, "valid_curve.png"))

    # an earlier run's curve file is rewritten even when no curve is left: merges read it back
    writes = (markdown, table_csv, plot) + ((curve_csv,) if curves or os.path.isfile(curve_path) else ())
    for write in writes + ((curve_plot,) if curves else ()):
        try:
            write()
        except (EtegrecError, OSError) as err:
            failures.append(str(err))
    return failures


def _figure(**kwargs):
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt.subplots(**{"figsize": (7, 4), **kwargs})


def _save(fig, ax, path):
    """Legend, layout, an atomic PNG write; the figure is closed whatever happens."""
    import matplotlib.pyplot as plt

    try:
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def plot_test_metrics(rows, dataset, path, margins=None) -> None:
    """Test scores as grouped bars; with ``margins`` a second panel shows each model's margin to the
    best other model on R@10 / N@10 with its 95% interval, so the bars' differences come with their
    noise (an interval crossing the dashed 0 line: not separable on this test split)."""
    ok = [r for r in rows if r["status"] == "ok"]
    if margins:
        fig, (ax, side) = _figure(ncols=2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    else:
        fig, ax = _figure()
    width = 0.8 / max(len(ok), 1)
    colors = {}
    for i, row in enumerate(ok):
        values = [row[f"test_{m}"] for m in REPORT_METRICS]
        xs = [j + i * width for j in range(len(REPORT_METRICS))]
        colors[row["model"]] = ax.bar(xs, values, width, label=row["model"])[0].get_facecolor()
    ax.set_xticks([j + width * (len(ok) - 1) / 2 for j in range(len(REPORT_METRICS))])
    ax.set_xticklabels([_metric_name(m) for m in REPORT_METRICS])
    ax.set_ylabel("test score")
    ax.set_title(f"{dataset}: test metrics (full ranking, leave-one-out)")
    if margins:
        _plot_margins(side, ok, margins, colors)
    _save(fig, ax, path)


def _metric_name(metric) -> str:
    return metric.replace("recall", "Recall").replace("ndcg", "NDCG")


def _plot_margins(ax, rows, margins, colors):
    """One line per (model, metric): the difference to the best other model and its 95% interval,
    top to bottom in table order, the numbers in one column on the right."""
    lines = [(row["model"], m, *margins[row["model"]][m]) for m in DELTA_METRICS for row in rows
             if m in margins.get(row["model"], {})]
    low, high = min(min(line[3] for line in lines), 0), max(max(line[4] for line in lines), 0)
    span = high - low or 1e-3
    for y, (model, _metric, diff, lo, hi, _other) in enumerate(lines):
        ax.errorbar([diff], [y], xerr=[[diff - lo], [hi - diff]], fmt="o", capsize=4, color=colors.get(model))
        ax.annotate(f"{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]", (high + 0.05 * span, y), va="center", fontsize=8)
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(lines)))
    ax.set_yticklabels([f"{model} vs {other}\n{_metric_name(metric)}" for model, metric, *_, other in lines],
                       fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(low - 0.1 * span, high + 0.9 * span)  # room for the numbers on the right
    ax.set_xlabel("test difference to the best other model (95% paired bootstrap)")
    ax.set_title("margin, per-user paired")


def plot_valid_curves(curves, dataset, path) -> None:
    """Validation score (valid_metric: NDCG@10 in every benchmark) per epoch, one line per model."""
    fig, ax = _figure()
    for model, hist in curves.items():
        ax.plot([e for e, _ in hist], [v for _, v in hist], marker=".", label=model)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid NDCG@10")
    ax.set_title(f"{dataset}: validation per epoch (early stopping on it)")
    _save(fig, ax, path)


def command_line() -> str:
    """How this process was started, as a user would retype it (script or console script)."""
    program = os.path.basename(sys.argv[0])
    prefix = [program] if program == "recbole-etegrec" else ["python", program]
    return " ".join(prefix + sys.argv[1:])
