"""The benchmark command end to end: three models on one tiny ml-100k split, plus a failing one."""
import csv
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_command_writes_table_csv_and_plot(tiny_config_dict, tmp_path):
    tiny = {**tiny_config_dict, "epochs": 1, "hidden_size": 16, "inner_size": 32,
            "num_encoder_layers": 1, "num_decoder_layers": 1, "d_model": 16, "num_heads": 2,
            "d_kv": 8, "d_ff": 32, "cycle": 2, "warm_epoch": 0, "finetune_epochs": 0,
            "debug_samples": 25}
    files = tmp_path / "tiny.yaml"
    files.write_text(yaml.safe_dump(tiny))
    out_dir = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_recbole_etegrec.py"), "--model_list",
         "SASRec,NoSuchModel,TIGER,ETEGRec", "--dataset", "ml-100k", "--config_files", str(files),
         "--benchmark_dir", str(out_dir)],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
        env={"RECBOLE_ETEGREC_NO_TCMALLOC": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 1, proc.stderr[-3000:]  # one model failed, the others ran
    rows = {r["model"]: r for r in csv.DictReader(open(out_dir / "results.csv"))}
    assert list(rows) == ["SASRec", "NoSuchModel", "TIGER", "ETEGRec"]
    assert rows["NoSuchModel"]["status"].startswith("failed") and "unknown model" in rows["NoSuchModel"]["status"]
    for model in ("SASRec", "TIGER", "ETEGRec"):
        row = rows[model]
        assert row["status"] == "ok", row
        for key in ("valid_recall@10", "test_recall@10", "test_ndcg@10"):
            assert 0.0 <= float(row[key]) <= 1.0
        assert float(row["train_time_s"]) > 0 and int(row["params"]) > 0 and float(row["peak_mem_mb"]) > 0
    table = (out_dir / "results.md").read_text()
    assert "| ETEGRec |" in table and "| TIGER |" in table and "failed" in table
    png = (out_dir / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    run = yaml.safe_load((out_dir / "run.yaml").read_text())
    assert run["command"].startswith("python run_recbole_etegrec.py --model_list SASRec,NoSuchModel,TIGER,ETEGRec")
    assert run["dataset"] == "ml-100k" and run["config_files"] == [str(files)] and run["commit"]
    # convergence report: epochs, best epoch and wall time per model, and the validation curves
    for model in ("SASRec", "TIGER", "ETEGRec"):
        assert int(rows[model]["epochs"]) == 1
        assert float(rows[model]["wall_time_s"]) >= float(rows[model]["train_time_s"])
        assert run["models"][model]["epochs_trained"] == 1 and run["models"][model]["wall_minutes"] >= 0
    assert run["models"]["NoSuchModel"]["status"].startswith("failed")
    # ETEGRec's tokenizer health: the start (epoch -1) and its one tokenizer epoch (epoch 0)
    health = run["models"]["ETEGRec"]["tokenizer_health"]
    assert [h["epoch"] for h in health] == [-1, 0] and len(health[1]["utilization"]) == 3
    assert "items_recoded" not in health[0] and 0 <= health[1]["items_recoded"] <= 1
    assert "tokenizer_health" not in run["models"]["SASRec"]
    curve = list(csv.DictReader(open(out_dir / "valid_curve.csv")))
    assert {r["model"] for r in curve} == {"SASRec", "TIGER", "ETEGRec"}
    assert (out_dir / "valid_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each model's per-user test values, and its margin to the best other model with the 95% interval
    for model in ("SASRec", "TIGER", "ETEGRec"):
        assert run["models"][model]["per_user_file"] == f"per_user/{model}.csv"
        assert len((out_dir / "per_user" / f"{model}.csv").read_text().splitlines()) == 1 + 25
        assert " [" in rows[model]["delta_recall@10"] and " vs " in rows[model]["delta_ndcg@10"]
    assert "delta_R@10" in table and rows["NoSuchModel"]["delta_recall@10"] == ""


def test_budget_variants_label_rows_and_run_their_model(tmp_path, monkeypatch):
    """A budget section with `model:` is a variant: its title labels the row, its keys reach the run."""
    import pytest

    from recbole_etegrec import benchmark
    from recbole_etegrec.errors import EtegrecError

    budget = tmp_path / "ablation.yaml"
    budget.write_text(yaml.safe_dump({"common": {"epochs": 3}, "Full": {"model": "ETEGRec"},
                                      "NoSIA": {"model": "ETEGRec", "rec_kl_loss": 0.0}}))
    calls = []

    def fake_run(model, dataset, config_files, config_dict, cmd_args):
        calls.append((model, config_dict))
        scores = {m: 0.1 for m in benchmark.REPORT_METRICS}
        return {"model": model, "valid_result": scores, "test_result": scores, "train_time": 1.0, "eval_time": 1.0,
                "params": 1, "peak_mem_mb": 1.0, "wall_time": 2.0, "epochs_trained": 3, "best_epoch": 1,
                "valid_history": [(1, 0.1)]}

    monkeypatch.setattr(benchmark, "run", fake_run)
    results = benchmark.run_models(["Full", "NoSIA"], "ml-100k", benchmark_dir=str(tmp_path / "out"),
                                   budget=str(budget))
    assert [r["model"] for r in results] == ["Full", "NoSIA"]
    assert calls == [("ETEGRec", {"epochs": 3}), ("ETEGRec", {"epochs": 3, "rec_kl_loss": 0.0})]
    assert [r["model"] for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))] == ["Full", "NoSIA"]
    with pytest.raises(EtegrecError, match="does not exist"):
        benchmark.load_budget("ml-100k", "no-such-budget")


TINY_MODELS = {"epochs": 1, "hidden_size": 16, "inner_size": 32, "num_encoder_layers": 1, "num_decoder_layers": 1,
               "d_model": 16, "num_heads": 2, "d_kv": 8, "d_ff": 32, "eval_batch_size": 16,
               "n_layers": 1, "train_batch_size": 512, "MAX_ITEM_LIST_LENGTH": 5}  # few, short steps: plumbing only
TIMINGS = {"train_time_s", "eval_time_s", "wall_time_s", "peak_mem_mb"}


def test_per_user_test_values_are_recboles_and_pair_across_models(tiny_config_dict):
    """RecBole's Recall/NDCG per user, captured from its own evaluator: their mean is the reported test
    metric, for RecBole's trainer (Pop, SASRec) and a code model's (TIGER), in one user order."""
    import numpy as np

    from recbole_etegrec.quick_start import REPORT_METRICS, run

    per_user = {}
    for model, users in (("Pop", 300), ("SASRec", 30), ("TIGER", 30)):  # Pop: enough users to have hits
        result = run(model, "ml-100k", config_dict={**tiny_config_dict, **TINY_MODELS, "debug_samples": users})
        values = per_user[model] = result["test_per_user"]
        assert len(values["users"]) == users and set(values) == {"users", *REPORT_METRICS}
        for metric in REPORT_METRICS:  # RecBole rounds to 4 places
            assert abs(values[metric].mean() - result["test_result"][metric]) <= 1e-4, (model, metric)
        for k in (5, 10):  # leave-one-out: one target a user, so recall is 0/1 and NDCG > 0 on hits only
            recall, ndcg = values[f"recall@{k}"], values[f"ndcg@{k}"]
            assert set(np.unique(recall)) <= {0.0, 1.0} and np.array_equal(ndcg > 0, recall > 0)
    assert per_user["Pop"]["recall@10"].sum() >= 3  # a model with hits: the mean check is not 0 == 0
    assert np.array_equal(per_user["SASRec"]["users"], per_user["TIGER"]["users"])
    assert run("Pop", "ml-100k", config_dict=tiny_config_dict, evaluate_test=False)["test_per_user"] is None


def _table(folder):
    rows = list(csv.DictReader(open(folder / "results.csv")))
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def test_model_by_model_runs_merge_into_the_one_invocation_table(tiny_config_dict, tmp_path):
    from recbole_etegrec.benchmark import run_models

    tiny = {**tiny_config_dict, **TINY_MODELS}
    one, split = tmp_path / "one", tmp_path / "split"
    run_models(["Pop", "SASRec"], "ml-100k", config_dict=tiny, benchmark_dir=str(one))
    run_models(["Pop"], "ml-100k", config_dict=tiny, benchmark_dir=str(split))
    run_models(["SASRec"], "ml-100k", config_dict=tiny, benchmark_dir=str(split))
    assert _table(split) == _table(one)
    assert [r["model"] for r in _table(one)] == ["Pop", "SASRec"]
    assert _table(one)[0]["delta_recall@10"].endswith("] vs SASRec")
    for name in ("per_user/Pop.csv", "per_user/SASRec.csv", "valid_curve.csv"):
        assert (split / name).read_text() == (one / name).read_text()
    head = (split / "per_user" / "Pop.csv").read_text().splitlines()[0]
    assert head == "user_id,recall@5,recall@10,ndcg@5,ndcg@10"
    run = yaml.safe_load((split / "run.yaml").read_text())
    assert list(run["models"]) == ["Pop", "SASRec"]
    for entry in run["models"].values():  # a merged table keeps each row's own origin
        assert entry["commit"] and entry["command"] and entry["started"] and entry["budget"] == {}
        assert entry["dataset"] == "ml-100k" and entry["epochs_trained"] == 1


def _fake_run(hits, calls=None, fail=()):
    """``benchmark.run`` stand-in: ``hits[label]`` of 50 users hit (recall 1, NDCG .5), the others miss."""
    import numpy as np

    from recbole_etegrec import benchmark

    def fake(model, dataset, config_files, config_dict, cmd_args):
        if calls is not None:
            calls.append(model)
        if model in fail:
            raise RuntimeError("boom")
        n = 50 if model != "Other50" else 30
        recall = (np.arange(n) < hits[model]).astype(np.float64)
        per_user = {"users": np.array([str(u) for u in range(1, n + 1)]), "recall@5": recall, "recall@10": recall,
                    "ndcg@5": recall / 2, "ndcg@10": recall / 2}
        scores = {m: float(per_user[m].mean()) for m in benchmark.REPORT_METRICS}
        return {"model": model, "valid_result": scores, "test_result": scores, "test_per_user": per_user,
                "train_time": 1.0, "eval_time": 1.0, "params": 1, "peak_mem_mb": 1.0, "wall_time": 2.0,
                "epochs_trained": 1, "best_epoch": 0, "valid_history": [(0, hits[model] / 100)]}
    return fake


def test_a_rerun_replaces_its_rows_in_place_and_keeps_the_others(tmp_path, monkeypatch):
    from recbole_etegrec import benchmark

    out = tmp_path / "bench"
    monkeypatch.setattr(benchmark, "run", _fake_run({"A": 10, "B": 5, "C": 1}))
    benchmark.run_models(["A", "B", "C"], "ml-100k", benchmark_dir=str(out))
    rows = {r["model"]: r for r in _table(out)}
    assert rows["A"]["delta_recall@10"].startswith("+0.1000 [") and rows["A"]["delta_recall@10"].endswith("vs B")
    assert rows["C"]["delta_ndcg@10"].startswith("-0.0900 [") and rows["C"]["delta_ndcg@10"].endswith("vs A")
    # an entry from before rows carried their origin gets the run's
    info = yaml.safe_load((out / "run.yaml").read_text())
    info["models"]["A"] = {"epochs_trained": 1, "per_user_file": "per_user/A.csv"}
    (out / "run.yaml").write_text(yaml.safe_dump(info, sort_keys=False))

    calls = []
    monkeypatch.setattr(benchmark, "run", _fake_run({"B": 20, "D": 2}, calls, fail=("C",)))
    benchmark.run_models(["C", "B", "D"], "ml-100k", benchmark_dir=str(out))
    assert calls == ["C", "B", "D"]
    rows = {r["model"]: r for r in _table(out)}
    assert list(rows) == ["A", "B", "C", "D"]  # replaced rows keep their place, new ones follow
    assert rows["A"]["test_recall@10"] == "0.2" and rows["B"]["test_recall@10"] == "0.4"
    assert rows["A"]["delta_recall@10"].startswith("-0.2000 [") and rows["A"]["delta_recall@10"].endswith("vs B")
    assert rows["C"]["status"] == "failed: RuntimeError: boom" and not (out / "per_user" / "C.csv").exists()
    curve = list(csv.DictReader(open(out / "valid_curve.csv")))
    assert [(r["model"], r["valid_score"]) for r in curve] == [("A", "0.1"), ("B", "0.2"), ("D", "0.02")]
    info = yaml.safe_load((out / "run.yaml").read_text())
    assert list(info["models"]) == ["A", "B", "C", "D"]
    assert info["models"]["A"]["commit"] and info["models"]["A"]["per_user_file"] == "per_user/A.csv"
    assert info["models"]["C"]["status"] == "failed: RuntimeError: boom"


def test_a_folder_that_cannot_be_merged_is_one_clear_error(tmp_path, monkeypatch):
    import pytest

    from recbole_etegrec import benchmark
    from recbole_etegrec.errors import EtegrecError

    calls = []
    monkeypatch.setattr(benchmark, "run", _fake_run({"A": 10, "B": 5, "Other50": 3}, calls))
    out = tmp_path / "bench"
    benchmark.run_models(["A"], "ml-100k", benchmark_dir=str(out))
    with pytest.raises(EtegrecError, match="holds results on dataset 'ml-100k' \\(run.yaml\\), not 'Scientific'"):
        benchmark.run_models(["B"], "Scientific", benchmark_dir=str(out))
    with pytest.raises(EtegrecError, match="test users of 'Other50' \\(30\\) and 'A' \\(50\\) differ"):
        benchmark.run_models(["Other50"], "ml-100k", benchmark_dir=str(out))
    assert calls == ["A", "Other50"]  # the other dataset's run stopped before training
    assert [r["model"] for r in _table(out)] == ["A"]  # the mixed table was never written
    (out / "per_user" / "A.csv").write_text("user_id,recall@10\n1,0\n1,1\n")
    with pytest.raises(EtegrecError, match="A.csv' lists a user twice"):
        benchmark.run_models(["B"], "ml-100k", benchmark_dir=str(out))
    (out / "run.yaml").unlink()
    with pytest.raises(EtegrecError, match="holds results.csv but no run.yaml"):
        benchmark.run_models(["B"], "ml-100k", benchmark_dir=str(out))


def test_run_yaml_commit_ignores_the_folders_own_outputs(tmp_path):
    """A checkout is marked changed by its tracked files, except benchmark results (a model-by-model
    run rewrites its folder before its next row; another folder's rows are not code either)."""
    from recbole_etegrec.benchmark import code_version

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "Data").mkdir(parents=True)
    (tmp_path / "benchmarks" / "Data" / "results.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    out = tmp_path / "benchmarks" / "Data"
    assert "uncommitted" not in code_version(str(tmp_path), str(out))
    (out / "results.md").write_text("new row\n")
    assert "uncommitted" not in code_version(str(tmp_path), str(out))
    assert "uncommitted" not in code_version(str(tmp_path), str(tmp_path / "benchmarks" / "Other"))
    (tmp_path / "results").mkdir()  # a folder outside benchmarks/: its own outputs only
    assert "uncommitted" not in code_version(str(tmp_path), str(tmp_path / "results"))
    (tmp_path / "benchmarks" / "speed.py").write_text("y = 1\n")
    git("add", "benchmarks/speed.py")  # a measurement script is code
    assert "uncommitted" in code_version(str(tmp_path), str(out))
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "y")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert code_version(str(tmp_path), str(out)).endswith("(with uncommitted changes)")
    assert code_version(str(tmp_path / "nowhere"), str(out)) == "unknown (not a git checkout)"
