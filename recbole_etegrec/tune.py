"""Hyper-parameter search for any recbole_etegrec model with Ray Tune and ASHA early stopping.

    python tune/run_tune.py --model SASRec --dataset ml-100k --space tune/spaces/sasrec.yaml \
        --num_samples 8 [--config_files a.yaml,b.yaml] [--address ray://...] [--key=value ...]
    recbole-etegrec tune ...  # the same

The sweep code lives in this importable module, so Ray pickles ``trial_fn`` by reference and its
workers import it like any module; the command (options, ``main``) is ``recbole_etegrec.commands.tune``,
which ``tune/run_tune.py`` calls. Config overrides (``--key=value`` or ``--key value``) follow
``recbole_etegrec.commands.args``' rules.

Trials call ``recbole_etegrec.quick_start.run`` with ``saved=False`` and report only the
*validation* metric (after every evaluation) to Ray; test metrics are computed once, by rerunning
the best sampled config in this process with ``saved=True``. Outputs: see tune/README.md.
"""
import csv
import difflib
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Dict, List, Tuple

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray 2.6's classic, compact status table

import yaml  # noqa: E402

from recbole_etegrec.errors import EtegrecError  # noqa: E402
from recbole_etegrec.io import atomic_path, atomic_write  # noqa: E402

if TYPE_CHECKING:
    from ray.tune.schedulers import ASHAScheduler

_SPACE_FIELDS = {"choice": ("values",), "grid": ("values",), "uniform": ("low", "high"),
                 "loguniform": ("low", "high"), "randint": ("low", "high")}


# -- search space ------------------------------------------------------------------------------
def load_space(path) -> Tuple[dict, Dict[str, str]]:
    """Read a space file into ``({key: ray.tune domain}, {key: 'type [bounds]'})``; every mistake
    names the file and key, as a typo here would otherwise surface as a Ray error in every trial."""
    from ray import tune

    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError:
        raise EtegrecError(f"search space '{path}' cannot be read: check the --space path") from None
    except yaml.YAMLError:
        raise EtegrecError(f"search space '{path}' is not valid YAML: fix the syntax") from None
    if not isinstance(raw, dict) or not raw:
        raise EtegrecError(f"search space '{path}' must be a non-empty mapping `key: {{type: ...}}`")
    space, notes = {}, {}
    for key, spec in raw.items():
        where = f"search space '{path}', key '{key}'"
        if not isinstance(spec, dict) or "type" not in spec:
            raise EtegrecError(f"{where}: expected a mapping with a `type` ({', '.join(_SPACE_FIELDS)})")
        kind = spec["type"]
        if kind not in _SPACE_FIELDS:
            raise EtegrecError(f"{where}: unknown type '{kind}'; use one of {', '.join(_SPACE_FIELDS)}")
        need, extra = _SPACE_FIELDS[kind], set(spec) - {"type", *_SPACE_FIELDS[kind]}
        missing = [field for field in need if field not in spec]
        if missing or extra:
            raise EtegrecError(f"{where}: type '{kind}' takes exactly the fields {', '.join(need)} "
                               f"(missing: {missing or 'none'}, unknown: {sorted(extra) or 'none'})")
        if kind in ("choice", "grid"):
            if not isinstance(spec["values"], list) or not spec["values"]:
                raise EtegrecError(f"{where}: `values` must be a non-empty list")
            space[key] = (tune.choice if kind == "choice" else tune.grid_search)(spec["values"])
            notes[key] = f"{kind} {spec['values']}"
            continue
        low, high, numeric = spec["low"], spec["high"], (int,) if kind == "randint" else (int, float)
        if kind != "randint":  # plain YAML reads 1e-4 (no dot) as a string
            low, high = (_number(v) for v in (low, high))
        if not all(isinstance(v, numeric) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            kind_word = "integers" if kind == "randint" else "numbers"
            raise EtegrecError(f"{where}: `low` and `high` must be {kind_word} with low < high "
                               f"(got {low!r}, {high!r})")
        if kind == "loguniform" and low <= 0:
            raise EtegrecError(f"{where}: loguniform needs low > 0 (got {low!r})")
        space[key] = getattr(tune, kind)(low, high)
        notes[key] = f"{kind} [{low}, {high}" + (")" if kind == "randint" else "]")
    return space, notes


def _number(value):
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def native(params) -> dict:
    """numpy scalars -> Python ones: the plugin's Config type-checks ints, and YAML can't dump numpy."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}


# -- one trial (runs inside a Ray worker) -------------------------------------------------------
def trial_fn(params, model, dataset, config_files, base_dict, cmd_args, cwd, metric_key, threads) -> None:
    """Train one sampled config. Ray starts workers in their own trial folders, so we move back to
    the launch folder (relative data_path/checkpoint_dir/log) and pin torch threads so concurrent
    trials do not oversubscribe the cores. ``gpu_id`` is the GPU Ray assigned (or none): RecBole
    writes CUDA_VISIBLE_DEVICES from ``gpu_id``, which would otherwise put every trial on GPU 0."""
    import ray
    import torch
    from ray.air import session

    from recbole_etegrec.quick_start import run

    if os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(threads)
    config_dict = {**base_dict, "gpu_id": ",".join(map(str, ray.get_gpu_ids())), **native(params)}

    def report(epoch_idx, valid_score, valid_result):
        metrics = {f"valid_{k}": float(v) for k, v in (valid_result or {}).items()}
        session.report({**metrics, metric_key: float(valid_score), "epoch": epoch_idx + 1})

    # trials never touch the test split: only the final rerun of the best config is tested
    run(model, dataset, config_file_list=config_files, config_dict=config_dict, cmd_args=cmd_args,
        saved=False, callback_fn=report, evaluate_test=False)


def make_scheduler(max_t, grace_period, reduction_factor) -> "ASHAScheduler":
    """ASHA that remembers which trials it cut before ``max_t``, for the 'stopped-early' status
    (a trial stopped by ASHA and one that ended by itself look the same in the ResultGrid)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        cut = set()

        def on_trial_result(self, runner, trial, result):
            decision = super().on_trial_result(runner, trial, result)
            if decision == TrialScheduler.STOP and result.get("training_iteration", 0) < max_t:
                RecordingASHA.cut.add(trial.trial_id)
            return decision

    return RecordingASHA(max_t=max_t, grace_period=min(grace_period, max_t),
                         reduction_factor=reduction_factor)


# -- driver ------------------------------------------------------------------------------------
def resolve(args, space) -> Tuple[dict, str, str, int]:
    """Build the trial-independent config once here: it fails fast on bad files/keys and tells
    us the metric to tune (valid_metric), its direction, and ASHA's max_t (evaluations/trial)."""
    from recbole_etegrec.config import Config
    from recbole_etegrec.validation import known_keys

    base = {"show_progress": False}
    if args.debug:
        base["debug"] = True
    if args.debug_samples is not None:
        base["debug_samples"] = args.debug_samples
    clash = sorted(set(space) & {a[2:].partition("=")[0] for a in args.cmd_args})
    if clash:
        raise EtegrecError(f"{', '.join(clash)} is both searched in '{args.space}' and fixed on the "
                           "command line (which would win): drop one of them")
    env = dict(os.environ)  # Config sets CUDA_VISIBLE_DEVICES from gpu_id: keep all GPUs for Ray
    config = Config(args.model, args.dataset, args.config_files, base, args.cmd_args)
    os.environ.clear()
    os.environ.update(env)
    known = known_keys(config)
    for key in space:  # a typo here would fail every trial inside Ray
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "no property file defines it"
            raise EtegrecError(f"search space '{args.space}' searches unknown config key '{key}': {hint}")
    if not config["eval_step"] or config["eval_step"] < 1:
        raise EtegrecError("tuning reports the validation metric: set eval_step to 1 or more")
    metric = config["valid_metric"].lower()
    max_t = max(1, math.ceil(config["epochs"] / config["eval_step"]))
    return base, f"valid_{metric}", "max" if config["valid_metric_bigger"] else "min", max_t


def collect(results, space_keys, metric_key, mode, cut) -> List[dict]:
    """One row per trial from the ResultGrid: sampled params, best valid metric, curve, status."""
    rows = []
    for result in results:
        df = result.metrics_dataframe
        has_curve = df is not None and metric_key in getattr(df, "columns", [])
        curve = df[["epoch", metric_key]].dropna().values.tolist() if has_curve else []
        trial_id = (result.metrics or {}).get("trial_id") or os.path.basename(result.path or "?")
        row = {"trial_id": trial_id, **{k: native(result.config or {}).get(k) for k in space_keys}}
        best = (max if mode == "max" else min)(curve, key=lambda p: p[1]) if curve else None
        row.update({metric_key: best[1] if best else None, "best_epoch": int(best[0]) if best else None,
                    "evaluations": len(curve), "epochs": int(curve[-1][0]) if curve else 0})
        if result.error is not None:
            lines = [ln for ln in str(result.error).strip().splitlines() if ln.strip()]
            row["status"] = "failed: " + (lines[-1].strip() if lines else type(result.error).__name__)
        else:
            row["status"] = "stopped-early" if trial_id in cut else "ok"
        rows.append({**row, "_curve": curve})
    return sorted(rows, key=lambda r: r["trial_id"])


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def write_outputs(out, rows, columns, metric_key, header) -> str:
    """trials.csv (machine-readable), trials.md (the printed table) and valid_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with atomic_write(os.path.join(out, "trials.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(fmt(r[c]).replace("|", "/") for c in columns) + " |" for r in rows]
    with atomic_write(os.path.join(out, "trials.md"), "w", encoding="utf-8") as f:
        f.write(header + "\n\n" + "\n".join(table) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["_curve"]:
            xs, ys = zip(*r["_curve"])
            ax.plot(xs, ys, marker="o", label=f"{r['trial_id']} ({r['status'].split(':')[0]})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=metric_key, title="validation metric per trial")
    ax.grid(alpha=0.3)
    if any(r["_curve"] for r in rows):
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(os.path.join(out, "valid_curves.png")) as tmp:  # a kill leaves the old plot
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return "\n".join(table)


def fixed_settings(args) -> str:
    """The sweep's non-sampled settings as CLI flags, to reproduce a trial outside the sweep."""
    files = ",".join(os.path.relpath(p) for p in args.config_files)
    debug = (["--debug"] if args.debug else []) + (
        [f"--debug_samples {args.debug_samples}"] if args.debug_samples is not None else [])
    return " ".join(([f"--config_files {files}"] if files else []) + debug + args.cmd_args)


def write_best_config(path, best, notes, args, metric_key) -> None:
    """The best sampled params as a property file (`key: value  # (type) meaning`), so
    `run_recbole_etegrec.py --config_files <the sweep's files>,best_config.yaml` reproduces it."""
    lines = [f"# (tune) Best trial {best['trial_id']} of a {args.model} sweep on {args.dataset}: "
             f"{metric_key} = {best[metric_key]:.4f} at epoch {best['best_epoch']}.",
             f"# Sampled keys only; the sweep's fixed settings were: {fixed_settings(args) or '(defaults)'}"]
    for key, note in notes.items():
        value = best[key]
        dumped = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"{dumped:<30}  # ({type(value).__name__}) sampled from {note}")
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def final_run(args, base, best, space_keys, out) -> str:
    """Rerun the best config once, saved=True, in this process: the only test-metric evaluation.
    It gets a trial's thread count: on small machines extra torch threads only slow it down."""
    import torch

    from recbole_etegrec.quick_start import run

    torch.set_num_threads(max(1, int(args.cpus_per_trial)))
    params = {k: best[k] for k in space_keys}
    res = run(args.model, args.dataset, config_file_list=args.config_files,
              config_dict={**base, **params}, cmd_args=args.cmd_args, saved=True)
    metrics = sorted(set(res["valid_result"]) | set(res["test_result"]))
    text = [f"# Final run of the best config ({best['trial_id']})", "",
            f"{args.model} on {args.dataset}, params: {params}", "",
            "| split | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for split in ("valid", "test"):
        text.append(f"| {split} | " + " | ".join(fmt(res[f"{split}_result"].get(m)) for m in metrics) + " |")
    text += ["", f"train_time_s: {res['train_time']:.1f}, params: {res['params']}, "
             f"saved_model_file: {res['saved_model_file']}"]
    with atomic_write(os.path.join(out, "final.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(text) + "\n")
    return "\n".join(text)


def _fit(args, space, base, metric_key, mode, max_t, stamp):
    """Build the Tuner (per-trial resources, ASHA, seeded random search, no retries) and run it."""
    from ray import air, tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    scheduler = make_scheduler(max_t, args.grace_period, args.reduction_factor)
    trainable = tune.with_parameters(
        trial_fn, model=args.model, dataset=args.dataset, config_files=args.config_files,
        base_dict=base, cmd_args=args.cmd_args, cwd=os.getcwd(), metric_key=metric_key,
        threads=max(1, int(args.cpus_per_trial)))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=metric_key, mode=mode, scheduler=scheduler, num_samples=args.num_samples,
            max_concurrent_trials=args.max_concurrent,
            search_alg=BasicVariantGenerator(random_state=args.seed)),
        run_config=air.RunConfig(
            name=f"{args.model}-{args.dataset}-{stamp}", storage_path=args.ray_dir, verbose=1,
            failure_config=air.FailureConfig(max_failures=0),
            progress_reporter=tune.CLIReporter(  # one trial table a minute, not a header every 5 s
                metric_columns=[metric_key, "epoch"], parameter_columns=list(space),
                max_report_frequency=60, print_intermediate_tables=True)))
    start = time.time()
    results = tuner.fit()
    return results, time.time() - start, type(scheduler).cut


def sweep(args) -> int:
    """Run the sweep and write every output; returns the process exit code."""
    import ray

    space, notes = load_space(args.space)
    base, metric_key, mode, max_t = resolve(args, space)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.output_dir or os.path.join("tune_results", f"{args.model}-{args.dataset}-{stamp}"))
    os.makedirs(out, exist_ok=True)
    if args.address:
        ray.init(address=args.address, log_to_driver=args.verbose)
    else:
        # no dashboard; Ray 2.6.3's gcs_server, raylet and workers still listen on every interface (their
        # bind address is hard-coded, _node_ip_address does not change it: tests/test_tune.py records it)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=args.verbose)
    try:
        results, elapsed, cut = _fit(args, space, base, metric_key, mode, max_t, stamp)
    finally:
        ray.shutdown()

    rows = collect(results, list(space), metric_key, mode, cut)
    columns = ["trial_id", *space, metric_key, "best_epoch", "evaluations", "epochs", "status"]
    header = (f"# {args.model} on {args.dataset}: {len(rows)} trials, {elapsed / 60:.1f} min\n\n"
              f"Command: `{args.prog} {' '.join(args.argv)}`  \n"
              f"Metric: best {metric_key} over evaluations ({mode}); ASHA max_t={max_t}, "
              f"grace_period={args.grace_period}, reduction_factor={args.reduction_factor}")
    print("\n" + write_outputs(out, rows, columns, metric_key, header))
    done = [r for r in rows if r[metric_key] is not None]
    if not done:
        print(f"error: every trial failed; see {out}/trials.md", file=sys.stderr)
        return 1
    best = (max if mode == "max" else min)(done, key=lambda r: r[metric_key])
    write_best_config(os.path.join(out, "best_config.yaml"), best, notes, args, metric_key)
    print(f"\nbest: {best['trial_id']} {metric_key}={best[metric_key]:.4f} -> {out}/best_config.yaml")
    if not args.skip_final_test:
        print("\n" + final_run(args, base, best, list(space), out))
    print(f"\nsweep took {elapsed:.0f} s; outputs in {out}")
    return 0


if __name__ == "__main__":  # the command: recbole_etegrec.commands.tune
    from recbole_etegrec.commands.tune import main

    sys.exit(main(prog="python -m recbole_etegrec.tune"))
