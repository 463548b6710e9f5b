"""recbole_etegrec.tune and its command (recbole_etegrec.commands.tune, tune/run_tune.py): the space
parser (fast) and one tiny SASRec sweep through the real CLI.

The sweep grids ``n_heads`` over [1, 2, 3] with hidden_size 16, so two trials train and the third
crashes in SASRec's constructor (16 is not a multiple of 3): deterministic, and it checks that a
failed trial is recorded while the sweep goes on.
"""
import contextlib
import csv
import io
import os
import subprocess
import sys

import pytest
import yaml

from recbole_etegrec import tune as run_tune
from recbole_etegrec.commands import tune as tune_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tune", "run_tune.py")
METRIC = "valid_ndcg@10"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_space_parser_accepts_every_type_and_the_shipped_spaces(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    space, notes = run_tune.load_space(write(tmp_path / "s.yaml", (
        "lr: {type: loguniform, low: 1e-4, high: 1.0e-2}\n"
        "drop: {type: uniform, low: 0.1, high: 0.5}\n"
        "size: {type: choice, values: [32, 64]}\n"
        "layers: {type: randint, low: 1, high: 4}\n"
        "heads: {type: grid, values: [1, 2]}\n")))
    assert isinstance(space["lr"], Float) and space["lr"].lower == pytest.approx(1e-4)
    assert isinstance(space["drop"], Float) and isinstance(space["size"], Categorical)
    assert isinstance(space["layers"], Integer) and space["heads"] == {"grid_search": [1, 2]}
    assert notes["layers"] == "randint [1, 4)"
    for name in ("sasrec", "tiger", "etegrec"):
        assert run_tune.load_space(os.path.join(REPO, "tune", "spaces", f"{name}.yaml"))[0]


@pytest.mark.parametrize("spec, message", [
    ("{type: normal, low: 0, high: 1}", "unknown type 'normal'"),
    ("{type: uniform, low: 0}", "missing: ['high']"),
    ("{type: choice, valus: [1]}", "unknown: ['valus']"),
    ("{type: loguniform, low: 0, high: 1}", "low > 0"),
    ("{type: randint, low: 3, high: 3}", "low < high"),
    ("0.5", "expected a mapping with a `type`"),
])
def test_space_parser_errors_name_the_file_and_key(tmp_path, spec, message):
    from recbole_etegrec.errors import EtegrecError

    path = write(tmp_path / "bad.yaml", f"lr: {spec}\n")
    with pytest.raises(EtegrecError) as err:
        run_tune.load_space(path)
    assert f"search space '{path}', key 'lr'" in str(err.value) and message in str(err.value)


def test_cli_reports_a_bad_space_as_one_line_and_exit_2(tmp_path, capsys):
    path = write(tmp_path / "bad.yaml", "lr: {type: gaussian, low: 0, high: 1}\n")
    code = tune_command.main(["--model", "SASRec", "--dataset", "ml-100k", "--space", path])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: search space '{path}', key 'lr'")


def test_the_script_is_a_thin_wrapper_of_the_module(tmp_path):
    """The README's `python tune/run_tune.py ...` still works (here: its one-line usage error)."""
    proc = subprocess.run([sys.executable, SCRIPT, "--model", "SASRec", "--dataset", "ml-100k"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: the following arguments are required: --space (see 'python tune/run_tune.py --help')"]


def test_overrides_take_both_forms():
    args = tune_command.parse_args(["--model", "SASRec", "--dataset", "ml-100k", "--space", "s.yaml",
                                "--epochs", "2", "--eval_step=1", "--seed", "7"])
    assert args.cmd_args == ["--epochs=2", "--eval_step=1"] and args.seed == 7


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Run ``main`` once in this process (no second interpreter to start: the suite stays fast)
    from a scratch folder, since RecBole writes log/ and saved/ into the cwd."""
    import torch

    work = tmp_path_factory.mktemp("sweep")
    space = write(work / "space.yaml", "learning_rate: {type: loguniform, low: 1.0e-3, high: 1.0e-2}\n"
                                       "n_heads: {type: grid, values: [1, 2, 3]}\n")
    base = write(work / "base.yaml", "hidden_size: 16\ninner_size: 32\nn_layers: 1\n")
    out = work / "out"
    argv = ["--model", "SASRec", "--dataset", "ml-100k", "--space", space, "--num_samples", "1",
            "--config_files", base, "--debug", "--debug_samples", "60", "--num_cpus", "2",
            "--cpus_per_trial", "1", "--output_dir", str(out), "--ray_dir", str(work / "ray"),
            "--epochs=2", "--eval_step=1"]
    cwd, threads, stdout = os.getcwd(), torch.get_num_threads(), io.StringIO()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(stdout):
            code = tune_command.main(argv)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    assert code == 0, stdout.getvalue()[-3000:]
    with open(out / "trials.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return out, rows, stdout.getvalue()


def test_sweep_records_trials_and_the_failure(sweep):
    out, rows, stdout = sweep
    assert len(rows) == 3
    by_heads = {row["n_heads"]: row for row in rows}
    for heads in ("1", "2"):
        assert by_heads[heads]["status"] == "ok"
        assert 0.0 <= float(by_heads[heads][METRIC]) <= 1.0
        assert by_heads[heads]["evaluations"] == "2" and by_heads[heads]["epochs"] == "2"
    failed = by_heads["3"]
    assert failed["status"].startswith("failed:") and "attention heads" in failed["status"]
    assert failed[METRIC] == ""
    assert not any("test" in column for column in rows[0])  # trials never see test metrics
    assert (out / "trials.md").read_text().count("| ok |") == 2
    png = (out / "valid_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert "| trial_id |" in stdout


def test_best_config_is_a_property_file_with_the_best_trials_values(sweep):
    from recbole_etegrec.config import Config

    out, rows, _ = sweep
    best = max((r for r in rows if r[METRIC]), key=lambda r: float(r[METRIC]))
    path = out / "best_config.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# (tune) Best trial " + best["trial_id"])
    loaded = yaml.safe_load(text)
    assert set(loaded) == {"learning_rate", "n_heads"}
    assert loaded["learning_rate"] == pytest.approx(float(best["learning_rate"]), rel=1e-12)
    assert loaded["n_heads"] == int(best["n_heads"])
    config = Config(model="SASRec", dataset="ml-100k", config_file_list=[str(path)])
    assert config["n_heads"] == loaded["n_heads"]
    assert config["learning_rate"] == pytest.approx(loaded["learning_rate"])


def test_final_run_reports_valid_and_test_of_the_best_config(sweep):
    out, rows, _ = sweep
    final = (out / "final.md").read_text(encoding="utf-8")
    best = max((r for r in rows if r[METRIC]), key=lambda r: float(r[METRIC]))
    assert best["trial_id"] in final
    assert "| valid |" in final and "| test |" in final
