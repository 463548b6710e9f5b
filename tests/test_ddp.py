"""Two CPU processes (gloo) under `accelerate launch`: ETEGRec trains, syncs and evaluates."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_two_process_ddp_training(tiny_config_dict, tmp_path):
    cfg = {**tiny_config_dict, "checkpoint_dir": str(tmp_path), "epochs": 2, "cycle": 2,
           "warm_epoch": 0, "finetune_epochs": 0}
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           str(Path(__file__).with_name("ddp_worker.py")), json.dumps(cfg)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in out.stdout.splitlines() if line.startswith("DDP_RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(lines[0][len("DDP_RESULT "):])
    assert result["ranks_equal"]
    assert set(result["test"]) >= {"recall@10", "ndcg@10"}
    assert all(0.0 <= v <= 1.0 for v in result["test"].values())
