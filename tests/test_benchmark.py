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
    curve = list(csv.DictReader(open(out_dir / "valid_curve.csv")))
    assert {r["model"] for r in curve} == {"SASRec", "TIGER", "ETEGRec"}
    assert (out_dir / "valid_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
