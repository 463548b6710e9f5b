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
import threading

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


SOCKETS = set()  # (address, port) of the sockets the sweep listened on


def listening():
    """(local address, port) of every listening TCP socket of this machine (/proc/net/tcp, tcp6)."""
    found = set()
    for name, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            found.add((address.rjust(width, "0"), int(port, 16)))
    return found


def is_loopback(address):
    """/proc/net hex: IPv4 127.x.x.x is stored little-endian (..7F); IPv6 ::1 and ::ffff:127.x."""
    if len(address) == 8:
        return address.endswith("7F")
    return address == "0" * 24 + "01000000" or (address[:24] == "0" * 16 + "FFFF0000" and address.endswith("7F"))


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
    before, seen, done = listening(), set(), threading.Event()

    def watch():  # every listening socket that appears while the sweep runs
        while not done.is_set():
            seen.update(listening() - before)
            done.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(stdout):
            code = tune_command.main(argv)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        done.set()
        watcher.join()
    SOCKETS.update(seen)
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


@pytest.mark.xfail(strict=True, reason="Ray 2.6.3 (the newest RecBole 1.2.1 allows) binds its gcs_server, raylet and "
                   "workers to every interface, whatever the node address (measured with ss -ltnp); strict: this "
                   "fails loudly once a Ray that binds loopback makes the sweep pass")
def test_a_local_sweep_listens_on_loopback_only(sweep):
    """Every listening socket the sweep opened (Ray's GCS, raylet, object manager, workers, ...) is
    on 127.0.0.1 or ::1: nothing of a local sweep is reachable from the network."""
    assert SOCKETS, "no listening socket seen: the watcher did not run while Ray was up"
    assert any(s[1] for s in SOCKETS)
    exposed = sorted(s for s in SOCKETS if not is_loopback(s[0]))
    assert not exposed, f"{len(exposed)} of {len(SOCKETS)} listening sockets are not on loopback: {exposed}"


def test_the_socket_watcher_saw_the_sweep(sweep):
    """The xfail above is a real measurement: the watcher saw Ray's listening sockets appear."""
    assert len(SOCKETS) >= 3, SOCKETS


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


@pytest.mark.parametrize("option, value, message", [
    ("--num_samples", "0", "--num_samples must be at least 1, got 0"),
    ("--num_samples", "-1", "--num_samples must be at least 1, got -1"),
    ("--reduction_factor", "1", "--reduction_factor must be above 1, got 1.0"),
    ("--cpus_per_trial", "0", "--cpus_per_trial must be above 0, got 0.0"),
])
def test_sweep_options_are_checked_before_ray_starts(tmp_path, capsys, option, value, message):
    space = write(tmp_path / "space.yaml", "learning_rate: {type: choice, values: [0.001]}\n")
    code = tune_command.main(["--model", "SASRec", "--dataset", "ml-100k", "--space", space, option, value])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}: fix the option"]


def test_a_misspelled_search_key_is_one_line_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started despite the bad space"))
    space = write(tmp_path / "space.yaml", "learning_rat: {type: choice, values: [0.001, 0.01]}\n")
    code = tune_command.main(["--model", "SASRec", "--dataset", "ml-100k", "--space", space])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: search space '{space}' searches unknown config key 'learning_rat': did you mean 'learning_rate'?"]
