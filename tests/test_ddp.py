"""Two CPU processes (gloo) under `accelerate launch`: ETEGRec trains, syncs and evaluates."""
import json
import os
import shutil
import socket
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


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
@pytest.mark.parametrize("model, sizes", [
    ("TIGER", ["--d_model=16", "--d_kv=8", "--num_heads=2", "--d_ff=32", "--num_encoder_layers=1",
               "--num_decoder_layers=1", "--code_num=16", "--e_dim=8", "--rqvae_hidden=[16]", "--rqvae_epochs=3",
               "--rqvae_warmup_epochs=1", "--item_emb_source=file"]),
    ("SASRec", ["--hidden_size=16", "--inner_size=32", "--n_layers=1", "--n_heads=1"]),
])
def test_torchrun_two_processes_one_table_one_checkpoint(model, sizes, item_emb_file, tmp_path):
    """RecBole's own trainer (SASRec) and TIGER's under `torchrun --nproc_per_node=2` on CPU (gloo):
    rc 0, rank 0 alone prints the table, writes the checkpoint and a log file."""
    root = Path(__file__).resolve().parents[1]
    saved = tmp_path / "saved"
    with socket.socket() as probe:  # a free port for the rendezvous (torchrun's workers cannot use port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = ["torchrun", "--nproc_per_node=2", f"--master_port={port}", str(root / "run_recbole_etegrec.py"),
           "--model", model, "--dataset", "ml-100k", "--debug", "--debug_samples", "40", "--epochs=1",
           f"--checkpoint_dir={saved}", "--show_progress=False", f"--item_emb_file={item_emb_file}", *sizes]
    if model == "SASRec":
        cmd.remove(f"--item_emb_file={item_emb_file}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("| model |") == 1, out.stdout[-3000:]
    best = [p.name for p in saved.glob(f"{model}-*.pth") if not p.name.endswith("-last.pth")]
    assert len(best) == 1, sorted(p.name for p in saved.iterdir())
    logs = list((tmp_path / "log").rglob("*.log"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0, logs
