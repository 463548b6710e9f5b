"""Fault tests: kill -9 during a checkpoint save, kill -9 mid-epoch then resume, cache miss vs hit.

The killed runs are real subprocesses that SIGKILL themselves at a fixed point (deterministic,
unlike a timer): ``python tests/test_faults.py WORKER_MODE CONFIG_JSON``.
"""
import glob
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {"RECBOLE_ETEGREC_NO_TCMALLOC": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT)}


def _worker(mode, config_dict):
    """Runs in the subprocess: one run that kills itself at the fault point."""
    from recbole_etegrec import io as plugin_io
    from recbole_etegrec.quick_start import run
    from recbole_etegrec.trainer.checkpoint import ResumableTrainerMixin

    torch.set_num_threads(1)
    if mode == "kill_in_save":  # the 2nd `last` save writes half its bytes, then kill -9
        saves = {"n": 0}
        real_save = torch.save

        def half_save(obj, f, **kwargs):
            if f"-last.pth{plugin_io.TMP_TAG}" in str(getattr(f, "name", "")):
                saves["n"] += 1
            if saves["n"] < 2:
                return real_save(obj, f, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = half_save
    elif mode.startswith("kill_mid_epoch"):  # kill_mid_epoch[:E]: the 2nd batch of epoch E (default 2)
        check = ResumableTrainerMixin._check_nan
        batches, kill_epoch = {"n": 0}, int(mode.partition(":")[2] or 2)

        def killing_check(self, loss):
            if self._epoch_idx == kill_epoch:
                batches["n"] += 1
                if batches["n"] == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return check(self, loss)

        ResumableTrainerMixin._check_nan = killing_check
    elif mode == "same_second":  # RecBole's clock stamps (checkpoint and log names) frozen to one second
        import recbole.trainer.trainer
        import recbole.utils.logger

        def frozen():
            return "Dec-03-2026_12-00-00"

        recbole.trainer.trainer.get_local_time = recbole.utils.logger.get_local_time = frozen
    model = config_dict.pop("model")
    result = run(model, "ml-100k", config_dict=config_dict)
    print(json.dumps({"saved_model_file": result["saved_model_file"], "test_result": result["test_result"]}))


def _worker_command(model, config_dict, mode):
    return [sys.executable, __file__, mode, json.dumps({**config_dict, "model": model})]


def _killed_run(model, config_dict, mode):
    proc = subprocess.run(_worker_command(model, config_dict, mode), capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed subprocess runs on one thread: same float sums
    yield
    torch.set_num_threads(threads)


def _last_file(folder, model):
    files = glob.glob(os.path.join(folder, f"{model}-*-last.pth"))
    assert len(files) == 1, files
    return files[0]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_kill_during_checkpoint_save_keeps_the_previous_one(tmp_path):
    from recbole_etegrec.io import remove_stale_tmp
    from recbole_etegrec.quick_start import run

    folder = str(tmp_path / "saved")
    sasrec = {"checkpoint_dir": folder, "debug": True, "debug_samples": 40, "show_progress": False,
              "epochs": 3, "hidden_size": 16, "inner_size": 32, "state": "WARNING"}
    _killed_run("SASRec", sasrec, "kill_in_save")
    last = _last_file(folder, "SASRec")
    stale = glob.glob(os.path.join(folder, ".*.tmp-*"))
    assert stale and os.path.getsize(stale[0]) > 0  # the kill really hit a half-written file
    checkpoint = _state(last)
    assert checkpoint["epoch"] == 0 and checkpoint["last"]  # the previous checkpoint, intact
    assert remove_stale_tmp(folder) == stale and not glob.glob(os.path.join(folder, ".*.tmp-*"))
    result = run("SASRec", "ml-100k", config_dict={**sasrec, "resume_file": last})  # and it resumes
    assert _state(last)["epoch"] == 2 and result["test_result"]


@pytest.mark.parametrize("kill_epoch", [2, 3], ids=["alternation", "finetune"])
def test_kill_mid_epoch_then_resume_equals_uninterrupted_run(tiny_config_dict, tmp_path, one_thread, kill_epoch):
    """ETEGRec, 3 alternation epochs (tokenizer 0, recommender 1, tokenizer 2) + 2 finetune epochs
    (3, 4), killed in epoch 2 (alternation) or 3 (finetune: the resumed run must not redo stage 1
    nor reload the best checkpoint again); the alternation case also checks that the
    uninterrupted run missed the tokenizer cache, a rerun hits it, both identical."""
    from recbole_etegrec.quick_start import run

    tiny = {**tiny_config_dict, "epochs": 3, "cycle": 2, "warm_epoch": 0, "finetune_epochs": 2,
            "debug_samples": 25}
    full_dir, killed_dir = str(tmp_path / "full"), str(tmp_path / "killed")
    uninterrupted = run("ETEGRec", "ml-100k", config_dict={**tiny, "checkpoint_dir": full_dir})
    full_last = _state(_last_file(full_dir, "ETEGRec"))
    assert full_last["finetune_start"] == 3 and full_last["finetune_optimizer"] is not None

    _killed_run("ETEGRec", {**tiny, "checkpoint_dir": killed_dir}, f"kill_mid_epoch:{kill_epoch}")
    last = _last_file(killed_dir, "ETEGRec")
    assert _state(last)["epoch"] == kill_epoch - 1  # epoch kill_epoch was under way
    resumed = run("ETEGRec", "ml-100k", config_dict={**tiny, "checkpoint_dir": killed_dir, "resume_file": last})
    resumed_last = _state(last)
    assert resumed_last["epoch"] == 4 and resumed_last["finished"]
    for name, tensor in full_last["state_dict"].items():
        assert torch.equal(tensor, resumed_last["state_dict"][name]), name
    assert resumed["test_result"] == uninterrupted["test_result"]
    assert resumed["best_valid_score"] == uninterrupted["best_valid_score"]
    if kill_epoch != 2:
        return
    cache_hit = run("ETEGRec", "ml-100k", config_dict={**tiny, "checkpoint_dir": full_dir})
    assert cache_hit["test_result"] == uninterrupted["test_result"]
    hit_last = _state(sorted(glob.glob(os.path.join(full_dir, "ETEGRec-*-last.pth")), key=os.path.getmtime)[-1])
    for name, tensor in full_last["state_dict"].items():
        assert torch.equal(tensor, hit_last["state_dict"][name]), name
    print("\nuninterrupted", uninterrupted["best_valid_score"], uninterrupted["test_result"],
          "\nresumed", resumed["best_valid_score"], resumed["test_result"],
          "\ncache hit", cache_hit["test_result"])


SASREC_TINY = {"debug": True, "debug_samples": 40, "show_progress": False, "epochs": 2, "hidden_size": 16,
               "inner_size": 32, "state": "WARNING"}


def test_two_runs_started_in_one_second_keep_their_own_files(tmp_path, one_thread):
    """Two SASRec runs (seeds 1 and 2) in one checkpoint_dir and one working folder, started
    together with RecBole's clock frozen to one second: each keeps its own best and last
    checkpoint and its own log, and each reports the metrics it gets alone."""
    from recbole_etegrec.quick_start import run

    shared = str(tmp_path / "saved")
    configs = [{**SASREC_TINY, "seed": seed, "checkpoint_dir": shared} for seed in (1, 2)]
    procs = [subprocess.Popen(_worker_command("SASRec", c, "same_second"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV) for c in configs]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    files = [r["saved_model_file"] for r in results]
    assert len(set(files)) == 2 and all("Dec-03-2026_12-00-00-" in f for f in files), files
    assert len(glob.glob(os.path.join(shared, "SASRec-*.pth"))) == 4  # two best, two last
    for path, config in zip(files, configs):
        assert _state(path)["config"]["seed"] == config["seed"]
        assert _state(path.replace(".pth", "-last.pth"))["config"]["seed"] == config["seed"]
    logs = [os.path.basename(p) for p in glob.glob(str(tmp_path / "log" / "SASRec" / "*.log"))]
    run_ids = [os.path.basename(f)[len("SASRec-Dec-03-2026_12-00-00-"):-len(".pth")] for f in files]
    assert len(logs) == 2 and all(sum(f"_12-00-00-{i}-" in log for log in logs) == 1 for i in run_ids), logs
    for result, config in zip(results, configs):
        folder = str(tmp_path / f"alone{config['seed']}")
        alone = run("SASRec", "ml-100k", config_dict={**config, "checkpoint_dir": folder})
        assert alone["test_result"] == pytest.approx(result["test_result"], abs=1e-12)
    assert results[0]["test_result"] != results[1]["test_result"]  # the two runs really differ


def test_one_config_started_twice_in_one_second_logs_to_two_files(tmp_path, monkeypatch):
    import logging

    import recbole.utils.logger

    from recbole_etegrec import compat
    from recbole_etegrec.config import Config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(recbole.utils.logger, "get_local_time", lambda: "Dec-03-2026_12-00-00")
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"state": "INFO"})
    root = logging.getLogger()
    kept = list(root.handlers)
    try:
        for run_id in ("aaaaaa", "bbbbbb"):
            root.handlers = []  # a fresh process each time: RecBole's basicConfig adds its handlers once
            compat.init_logger(config, run_id)
            logging.getLogger().info(f"run {run_id}")
            for handler in root.handlers:
                handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers = kept
    logs = sorted(glob.glob(str(tmp_path / "log" / "SASRec" / "*.log")))
    assert [os.path.basename(p).split("-")[-2] for p in logs] == ["aaaaaa", "bbbbbb"], logs
    assert ["run aaaaaa" in open(p).read() for p in logs] == [True, False]


def test_resume_changes_ignore_run_keys_and_dict_order():
    from types import SimpleNamespace

    from recbole_etegrec.trainer.checkpoint import resume_changes

    saved = SimpleNamespace(final_config_dict={
        "llama_config": {"hidden_size": 32, "num_hidden_layers": 2}, "seed": 1, "epochs": 3, "checkpoint_dir": "a",
        "old_key": 5})
    now = SimpleNamespace(final_config_dict={
        "llama_config": {"num_hidden_layers": 2, "hidden_size": 32}, "seed": 2, "epochs": 9, "checkpoint_dir": "b",
        "new_key": [1]})
    assert resume_changes(saved, now) == ["new_key: (absent) -> [1]", "old_key: 5 -> (absent)", "seed: 1 -> 2"]


def test_a_resumed_run_writes_only_into_its_own_checkpoint_dir(tmp_path):
    """Resuming another folder's -last.pth writes copies in the new --checkpoint_dir and leaves the
    original files untouched; resuming a read-only -last.pth in its own folder stops before any
    epoch with one line (the run would replace it)."""
    from recbole_etegrec.errors import EtegrecError
    from recbole_etegrec.quick_start import run

    first = str(tmp_path / "first")
    run("SASRec", "ml-100k", config_dict={**SASREC_TINY, "checkpoint_dir": first})
    last = _last_file(first, "SASRec")
    before = {p: (os.path.getmtime(p), _state(p)["epoch"]) for p in glob.glob(os.path.join(first, "*.pth"))}
    second = str(tmp_path / "second")
    resumed = run("SASRec", "ml-100k", config_dict={**SASREC_TINY, "epochs": 4, "checkpoint_dir": second,
                                                    "resume_file": last})
    assert {p: (os.path.getmtime(p), _state(p)["epoch"]) for p in glob.glob(os.path.join(first, "*.pth"))} == before
    assert os.path.dirname(resumed["saved_model_file"]) == second
    assert _state(_last_file(second, "SASRec"))["epoch"] == 3 and resumed["test_result"]

    os.chmod(last, 0o444)
    with pytest.raises(EtegrecError, match="resume_file '.*-last.pth' is read-only and this run would replace it"):
        run("SASRec", "ml-100k", config_dict={**SASREC_TINY, "epochs": 4, "checkpoint_dir": first,
                                              "resume_file": last})
    assert {p: (os.path.getmtime(p), _state(p)["epoch"]) for p in glob.glob(os.path.join(first, "*.pth"))} == before


if __name__ == "__main__":
    _worker(sys.argv[1], json.loads(sys.argv[2]))
