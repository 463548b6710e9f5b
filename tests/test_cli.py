"""recbole_etegrec.cli and recbole_etegrec.commands: the shared argument rules, the shared error
handler, and the ``recbole-etegrec`` console script (its subcommands call the commands' ``main``)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_etegrec import cli
from recbole_etegrec.errors import EtegrecError

ROOT = Path(__file__).resolve().parents[1]


def _parser(prog="prog"):
    parser = cli.ArgumentParser(prog=prog)
    parser.add_argument("--model", "-m")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--debug_samples", type=int, default=1000)
    return parser


@pytest.mark.parametrize("argv, options, overrides", [
    (["--model", "X", "--epochs", "3", "--lr_rec=0.1", "--flag"],
     {"model": "X", "debug": False}, ["--epochs=3", "--lr_rec=0.1", "--flag=True"]),
    (["--model=X", "--show_progress", "--debug", "--lr_rec", "-0.001", "--debug_samples", "5"],
     {"model": "X", "debug": True, "debug_samples": 5}, ["--show_progress=True", "--lr_rec=-0.001"]),
    (["-m", "X", "--flag", "-m", "Y", "--dataset=Toy"],  # a declared short option is no value
     {"model": "Y", "dataset": "Toy"}, ["--flag=True"]),
    (["--model", "X", "--debug_s", "3"],  # no abbreviations: an unknown name is a config key
     {"model": "X", "debug_samples": 1000}, ["--debug_s=3"]),
    (["--model", "X", "--a=b=c", "--empty="], {"model": "X"}, ["--a=b=c", "--empty="]),
])
def test_parser_splits_declared_options_from_config_overrides(argv, options, overrides):
    args, cmd_args = cli.parse_args(_parser(), argv)
    assert {k: getattr(args, k) for k in options} == options
    assert cmd_args == overrides


@pytest.mark.parametrize("argv, overrides, message", [
    (["--model", "X", "oops"], True, "unrecognized argument 'oops': config overrides look like --key=value"),
    (["--model"], True, "argument --model/-m: expected one argument (see 'prog --help')"),
    (["--debug_samples", "many"], True, "argument --debug_samples: invalid int value: 'many'"),
    (["--model", "X", "--epochs=3"], False, "unrecognized argument '--epochs=3' (see 'prog --help')"),
])
def test_parser_errors_are_usage_errors(argv, overrides, message):
    with pytest.raises(cli.UsageError) as err:
        cli.parse_args(_parser(), argv, overrides=overrides)
    assert message in str(err.value) and isinstance(err.value, EtegrecError)


def test_handler_turns_user_errors_into_one_line(capsys):
    def fail():
        raise EtegrecError("bad value\nfor 'epochs': fix it")

    def interrupt():
        raise KeyboardInterrupt

    assert cli.handle(fail) == 2
    assert capsys.readouterr().err == "error: bad value for 'epochs': fix it\n"
    assert cli.handle(interrupt) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert cli.handle(lambda: None) == 0 and cli.handle(lambda: 1) == 1
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli.handle(lambda: 1 / 0)


def test_prepare_and_recommend_take_no_config_overrides(tmp_path, capsys):
    from recbole_etegrec.commands import prepare
    from recbole_etegrec.commands.recommend import main as recommend_main

    assert prepare.main([str(tmp_path), "--name", "Toy", "--epochs=3"]) == 2
    assert recommend_main(["--checkpoint", "x.pth", "--user", "1", "--epochs", "3"]) == 2
    assert cli.main(["prepare"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: unrecognized argument '--epochs=3' (see 'python -m recbole_etegrec.data.prepare --help')",
                   "error: unrecognized argument '--epochs' (see 'python -m recbole_etegrec.recommend --help')",
                   "error: the following arguments are required: source, --name "
                   "(see 'recbole-etegrec prepare --help')"]


@pytest.mark.parametrize("name", ["run", "prepare", "tokenize", "tune", "recommend", "export_lora"])
def test_subcommands_call_the_command_modules(name, monkeypatch):
    import importlib

    calls = []
    monkeypatch.setattr(importlib.import_module(f"recbole_etegrec.commands.{name}"), "main",
                        lambda argv, prog: calls.append((list(argv), prog)) or 7)
    assert cli.main([name, "--model", "X", "--epochs", "3"]) == 7
    assert calls == [(["--model", "X", "--epochs", "3"], f"recbole-etegrec {name}")]


def test_the_run_script_is_the_run_command(monkeypatch):
    sys.path.insert(0, str(ROOT))
    import run_recbole_etegrec
    from recbole_etegrec.commands import run

    monkeypatch.setattr(run, "main", lambda argv: ("run_main", argv))
    assert run_recbole_etegrec.main(["--model", "X"]) == ("run_main", ["--model", "X"])


def test_unknown_subcommand_is_one_error_line(capsys):
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument COMMAND: invalid choice: 'trian'")


def _console_script():
    path = os.path.join(os.path.dirname(sys.executable), "recbole-etegrec")
    path = path if os.path.isfile(path) else shutil.which("recbole-etegrec")
    if not path:
        pytest.skip("recbole-etegrec is not installed: pip install --no-deps -e . registers it")
    return path


def test_console_script_help_and_a_user_error(tmp_path):
    """Every process at once: each one's time is mostly importing the package (torch, RecBole)."""
    script = _console_script()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RECBOLE_ETEGREC_NO_TCMALLOC", None)  # the error run goes through the tcmalloc re-exec
    commands = {name: [script, name, "--help"] for name in cli.SUBCOMMANDS}
    commands["top"] = [script, "--help"]
    commands["error"] = [script, "run", "--model", "NoSuchModel", "--dataset", "ml-100k"]
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    cwd=tmp_path, env={**env, "PYTHONPROFILEIMPORTTIME": "1"} if name == "top" else env)
             for name, cmd in commands.items()}
    done = {name: (proc.communicate(timeout=600), proc.returncode) for name, proc in procs.items()}
    for name in cli.SUBCOMMANDS:
        (out, err), code = done[name]
        assert code == 0 and out.startswith(f"usage: recbole-etegrec {name} "), err[-2000:]
    (out, err), code = done["top"]
    assert code == 0 and all(f"    {name}" in out for name in cli.SUBCOMMANDS), out
    imported = {line.rpartition("|")[2].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert imported and not imported & {"ray", "transformers", "peft", "matplotlib"}  # only in the subcommands
    (out, err), code = done["error"]
    assert code == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown model 'NoSuchModel'" in errors[0], err[-3000:]
    assert "Traceback" not in out + err
