"""Run several models on one dataset and report them side by side (Markdown, CSV, PNG)."""
import csv
import os
import subprocess
import sys
import time
import traceback
from typing import List

import yaml

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import atomic_path, atomic_write, check_writable, remove_stale_tmp
from recbole_etegrec.quick_start import REPORT_METRICS, run
from recbole_etegrec.registry import properties_dir

COLUMNS = (
    [f"valid_{m}" for m in REPORT_METRICS] + [f"test_{m}" for m in REPORT_METRICS]
    + ["epochs", "best_epoch", "train_time_s", "eval_time_s", "wall_time_s", "params", "peak_mem_mb"]
)


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
    return info


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
    ``config_files``; command-line ``--key=value`` still wins. A single model's bad input (unknown
    model, missing data, bad config) is raised as is.
    """
    budget = load_budget(dataset, budget) if benchmark_dir else {}
    if benchmark_dir:
        check_writable(benchmark_dir, "benchmark_dir")  # found before the first model trains
        provenance = write_provenance(benchmark_dir, dataset, budget, config_files, config_dict, cmd_args)
    results = []
    for label in models:
        section = dict(budget.get(label, {}))
        model = section.pop("model", label)  # a variant section names the model it runs
        model_dict = {**budget.get("common", {}), **section, **(config_dict or {})}
        print(f"=== [{len(results) + 1}/{len(models)}] {label} on {dataset}", flush=True)
        try:
            result = dict(run(model, dataset, config_files, model_dict or None, cmd_args), model=label)
        except Exception as err:  # a crash in one model must not hide the others' results
            if len(models) == 1:
                raise
            if not isinstance(err, EtegrecError):  # user errors are one clear line already
                traceback.print_exc()
            result = {"model": label, "error": f"{type(err).__name__}: {err}"}
        results.append(result)
        # rewrite the table after every model: a long benchmark shows (and keeps) what is done
        rows = [result_row(r) for r in results]
        table = markdown_table(rows, dataset)
        print(table.splitlines()[-1], flush=True)  # the finished row reaches the log whatever happens
        if benchmark_dir:
            provenance["models"] = {r["model"]: convergence(r) for r in results}
            failures = write_benchmark(rows, table, dataset, benchmark_dir, results)
            try:
                _write_yaml(os.path.join(benchmark_dir, "run.yaml"), provenance)
            except OSError as err:
                failures.append(str(err))
            for failure in failures:
                print(f"error: {failure}", file=sys.stderr, flush=True)
                result.setdefault("write_error", failure)
    print(table, flush=True)
    return results


def write_provenance(out_dir, dataset, budget, config_files, config_dict, cmd_args) -> dict:
    """``DIR/run.yaml``: the exact command, code version and budget behind the tables."""
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    info = {
        "command": command_line(),
        "dataset": dataset, "commit": commit, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_cores": os.cpu_count(), "config_files": config_files, "config_dict": config_dict,
        "cmd_args": cmd_args, "budget": budget,
    }
    _write_yaml(os.path.join(out_dir, "run.yaml"), info)
    return info


def _write_yaml(path, info):
    with atomic_write(path, "w") as f:
        yaml.safe_dump(info, f, sort_keys=False)


def write_benchmark(rows, table, dataset, out_dir, results=()) -> List[str]:
    """Write results.md, results.csv, results.png and (from ``results``' validation histories)
    valid_curve.csv / valid_curve.png, each atomically and independently (one failing write never
    stops the others, nor the remaining models); returns the failures."""
    failures = []
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
        plot_test_metrics(rows, dataset, os.path.join(out_dir, "results.png"))

    curves = {r["model"]: r["valid_history"] for r in results if r.get("valid_history")}

    def curve_csv():
        with atomic_write(os.path.join(out_dir, "valid_curve.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["model", "epoch", "valid_score"])
            writer.writerows((model, epoch, score) for model, hist in curves.items() for epoch, score in hist)

    def curve_plot():
        plot_valid_curves(curves, dataset, os.path.join(out_dir, "valid_curve.png"))

    for write in (markdown, table_csv, plot) + ((curve_csv, curve_plot) if curves else ()):
        try:
            write()
        except (EtegrecError, OSError) as err:
            failures.append(str(err))
    return failures


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4))


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


def plot_test_metrics(rows, dataset, path) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = _figure()
    width = 0.8 / max(len(ok), 1)
    for i, row in enumerate(ok):
        values = [row[f"test_{m}"] for m in REPORT_METRICS]
        xs = [j + i * width for j in range(len(REPORT_METRICS))]
        ax.bar(xs, values, width, label=row["model"])
    ax.set_xticks([j + width * (len(ok) - 1) / 2 for j in range(len(REPORT_METRICS))])
    ax.set_xticklabels([m.replace("recall", "Recall").replace("ndcg", "NDCG") for m in REPORT_METRICS])
    ax.set_ylabel("test score")
    ax.set_title(f"{dataset}: test metrics (full ranking, leave-one-out)")
    _save(fig, ax, path)


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
