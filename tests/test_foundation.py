"""Plugin plumbing: model/trainer lookup, property layering, bad input, the run script."""
import subprocess
import sys
from pathlib import Path

import pytest
from recbole.trainer import Trainer

from recbole_etegrec.config import Config
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.registry import get_model, get_trainer

ROOT = Path(__file__).resolve().parents[1]


def test_plugin_models_first_then_recbole():
    assert get_model("ETEGRec").__module__ == "recbole_etegrec.model.etegrec"
    assert get_model("SASRec").__module__ == "recbole.model.sequential_recommender.sasrec"
    with pytest.raises(EtegrecError, match="unknown model 'NoSuchModel'"):
        get_model("NoSuchModel")
    assert get_trainer(None, "ETEGRec").__name__ == "ETEGRecTrainer"
    assert get_trainer(get_model("SASRec").type, "SASRec") is Trainer


def test_property_layering_order(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("hidden_size: 48\nn_layers: 3\n")
    config = Config(model="SASRec", dataset="ml-100k", config_file_list=[str(user)],
                    cmd_args=["--n_layers=4"])
    assert config["MAX_ITEM_LIST_LENGTH"] == 20      # properties/dataset/ml-100k.yaml over RecBole's 50
    assert config["loss_type"] == "CE"                # properties/model/SASRec.yaml
    assert config["hidden_size"] == 48                # user file over the model file
    assert config["n_layers"] == 4                    # command line over the user file
    assert config["valid_metric"] == "NDCG@10"
    assert "code_num" not in config                   # tokenizer keys only for code models
    assert Config(model="ETEGRec", dataset="ml-100k")["code_num"] == 256


def test_wrong_type_names_key_and_source(tmp_path):
    with pytest.raises(EtegrecError, match=r"'epochs' from the command line expects int"):
        Config(model="SASRec", dataset="ml-100k", cmd_args=["--epochs=abc"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: fast\n")
    with pytest.raises(EtegrecError, match=r"'learning_rate' from config file .*bad.yaml"):
        Config(model="SASRec", dataset="ml-100k", config_file_list=[str(bad)])


def test_invalid_yaml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [1, 2\n")
    with pytest.raises(EtegrecError, match="not valid YAML"):
        Config(model="SASRec", dataset="ml-100k", config_file_list=[str(broken)])
    with pytest.raises(EtegrecError, match="does not exist"):
        Config(model="SASRec", dataset="ml-100k", config_file_list=[str(tmp_path / "nope.yaml")])


def _run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "run_recbole_etegrec.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"RECBOLE_ETEGREC_NO_TCMALLOC": "1", "PATH": "/usr/bin:/bin"})


def test_bad_dataset_inputs_give_one_error_line(tmp_path):
    data = tmp_path / "data"
    (data / "empty").mkdir(parents=True)
    (data / "broken").mkdir()
    (data / "broken" / "broken.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t3\n")
    (data / "nonnum").mkdir()
    (data / "nonnum" / "nonnum.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tyesterday\n")
    cases = {
        "nosuch": "unknown dataset 'nosuch'",
        "empty": "has no 'empty.inter'",
        "broken": "broken.inter: line 3 has 2 fields but the header has 3",
        "nonnum": "line 2 column 'timestamp:float' holds 'yesterday'",
    }
    for name, message in cases.items():
        out = _run_script("--model", "Pop", "--dataset", name, f"--data_path={data}",
                          f"--checkpoint_dir={tmp_path / 'saved'}", cwd=tmp_path)
        assert out.returncode == 2, out.stderr[-2000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr


def test_unknown_model_from_the_script(tmp_path):
    out = _run_script("--model", "SASRek", "--dataset", "ml-100k", cwd=tmp_path)
    assert out.returncode == 2 and "unknown model 'SASRek'" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_script_sasrec_end_to_end(tmp_path):
    """A RecBole built-in model through the plugin pipeline, incl. the best-checkpoint reload
    (torch.load(weights_only=False) for RecBole's own checkpoints)."""
    out = _run_script("--model", "SASRec", "--dataset", "ml-100k", "--epochs=1", "--debug",
                      "--debug_samples", "60", "--show_progress=False", "--hidden_size=16",
                      "--inner_size=32", f"--checkpoint_dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Loading model structure and parameters from" in out.stdout + out.stderr
    table = [line for line in out.stdout.splitlines() if line.startswith("| SASRec |")]
    assert table and table[0].endswith("| ok |")
