"""Every script in benchmarks/ runs on a tiny ml-100k split (``--max_batches``) and prints figures
that agree with each other: each timed training pass is one epoch (its batches are the loader's,
or ``--max_batches``), every rate is its count over its printed seconds, every "Nx" ratio is the
quotient of the two printed times. The scripts run in this process (``main(argv)``) to save an
interpreter start each; their output is read as a user reads it."""
import importlib.util
import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_tiger import TINY_T5

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interval(text):
    """(low, high) of the value a printed, rounded number stands for."""
    text = text.replace(",", "").strip()
    half = 0.5 * 10 ** -len(text.partition(".")[2])
    return float(text) - half, float(text) + half


def agrees(printed, numerator, denominator):
    """A printed quotient is consistent with numerator / denominator (each printed, or exact)."""
    n_lo, n_hi = interval(numerator) if isinstance(numerator, str) else (numerator, numerator)
    d_lo, d_hi = interval(denominator) if isinstance(denominator, str) else (denominator, denominator)
    p_lo, p_hi = interval(printed)
    return d_lo > 0 and p_lo <= n_hi / d_lo and n_lo / d_hi <= p_hi


def table_rows(text):
    """Markdown table rows as lists of cells (rule rows dropped)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ")]


@pytest.fixture(scope="module")
def tiny_files(tiny_config_dict, tmp_path_factory):
    """One property file for both code models: the tiny tokenizer and LLaMA of the suite, a tiny
    T5, 4 alternation epochs with SIA/PSA from epoch 1 (the timed recommender epoch is 1)."""
    tiny = {**tiny_config_dict, **TINY_T5, "epochs": 4, "cycle": 2, "warm_epoch": 1, "finetune_epochs": 0,
            "train_batch_size": 16, "eval_batch_size": 16, "debug_samples": 20}
    path = tmp_path_factory.mktemp("bench") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return str(path), tiny


def test_every_script_is_covered():
    assert SCRIPTS == ["beam_search_speed", "inference_speed", "memory_7b", "train_speed"]


@pytest.mark.parametrize("max_batches, skip_tiger", [(2, False), (None, True)])
def test_train_speed_times_exactly_one_epoch(tiny_files, tmp_path, capsys, max_batches, skip_tiger):
    """Capped: every pass stops at 2 batches, TIGER included. Uncapped (SIA/PSA recommender epoch of
    a 4-epoch alternation with a finetune stage configured): the pass is the loader's one epoch,
    which ``fit`` would have turned into every remaining epoch of both stages."""
    path, tiny = tiny_files
    out = tmp_path / "train_speed.md"
    argv = ["--dataset", "ml-100k", "--config_files", path, "--out", str(out), "--prefix_batch_size", "64"]
    argv += (["--max_batches", str(max_batches), "--warmup_batches", "1"] if max_batches else
             ["--warmup_batches", "0", "--debug_samples=4", "--finetune_epochs=2"])
    argv += ["--skip_tiger"] if skip_tiger else []
    assert load_script("train_speed").main(argv) == 0
    stdout, text = capsys.readouterr().out, out.read_text()
    assert text in stdout

    timed = re.findall(r"timed epoch (\d+): (\d+) batches fed, loader length (\d+), max_batches (\w+), ([\d.]+) s",
                       stdout)
    assert len(timed) == (2 if skip_tiger else 4)
    assert [int(t[0]) for t in timed] == [1, 1] + ([] if skip_tiger else [0, 0])  # ETEGRec's rec epoch 1
    for _, fed, length, cap, seconds in timed:
        assert int(fed) == (min(int(length), max_batches) if max_batches else int(length)) > 0
        assert cap == str(max_batches) and float(seconds) > 0
    assert ("every pass stopped after 2 batches" if max_batches else "whole epochs") in text
    warmups = re.findall(r"warm-up epoch (\d+): (\d+) batches fed", stdout)  # untimed, before each pass
    warmup = 1 if max_batches else 0
    assert [w[1] for w in warmups] == ["1"] * len(timed) * warmup
    assert f"{warmup} untimed warm-up batches before each pass" in text

    rows = {r[0]: r for r in table_rows(text)}
    names = ["ETEGRec prefix, ungrouped, batch 64", f"ETEGRec sequence, grouped, batch {tiny['train_batch_size']}",
             "bare backbone fwd+bwd, sequence batches"] + ([] if skip_tiger else ["TIGER, ungrouped", "TIGER, grouped"])
    train_rows = [r for r in rows.values() if len(r) == 8 and r[0] != "run"]
    assert [r[0] for r in train_rows] == names
    fed = [t[1] for t in timed]
    assert [r[1] for r in train_rows] == fed[:2] + [fed[1]] + fed[2:]  # the bare backbone reruns sequence's
    for name, _, real, padded, padded_per_real, seconds, rate, _ in train_rows:
        assert interval(seconds)[1] > 0 and agrees(rate, int(real.replace(",", "")), seconds), name
        assert agrees(padded_per_real, int(padded.replace(",", "")), int(real.replace(",", ""))), name
    prefix, sequence, bare = (rows[n] for n in names[:3])
    speedup, versus_bare = re.fullmatch(r"([\d.]+)x faster than prefix; ([\d.]+)x the bare backbone",
                                        sequence[7]).groups()
    assert agrees(speedup, prefix[5], sequence[5]) and agrees(versus_bare, sequence[5], bare[5])
    if not skip_tiger:
        ratio = re.fullmatch(r"([\d.]+)x faster than ungrouped", rows["TIGER, grouped"][7]).group(1)
        assert agrees(ratio, rows["TIGER, ungrouped"][5], rows["TIGER, grouped"][5])

    ungrouped, grouped = rows["ETEGRec validation, ungrouped"], rows["ETEGRec validation, grouped"]
    users = int(ungrouped[1].replace(",", ""))
    assert 0 < users <= (max_batches * tiny["eval_batch_size"] if max_batches else users) and grouped[1] == ungrouped[1]
    for r in (ungrouped, grouped):
        assert agrees(r[4], users, r[3]) and 0 <= float(r[5]) <= 1
    ratio = re.fullmatch(r"([\d.]+)x faster than ungrouped", grouped[6]).group(1)
    assert agrees(ratio, ungrouped[3], grouped[3])


def test_beam_search_speed_decodes_the_batches_it_names(tiny_files, tmp_path, capsys):
    """A checkpoint of the tiny ETEGRec (untrained weights: the script measures decoding, not quality)."""
    from recbole_etegrec.model.etegrec import ETEGRec
    from tests.conftest import build

    path, tiny = tiny_files
    config, (train, _, _) = build("ETEGRec", tiny)
    model = ETEGRec(config, train._dataset)
    checkpoint = tmp_path / "ETEGRec-tiny.pth"
    torch.save({"state_dict": model.state_dict(), "other_parameter": model.other_parameter()}, checkpoint)

    argv = ["--dataset", "ml-100k", "--config_files", path, "--checkpoint", str(checkpoint),
            "--users", "1000", "--num_beams", "10", "--max_batches", "1"]
    assert load_script("beam_search_speed").main(argv) == 0
    out = capsys.readouterr().out
    users, batches, loader = map(int, re.search(r"(\d+) users in (\d+) batches \(valid loader: (\d+)\)", out).groups())
    assert batches == min(1, loader) and 0 < users <= batches * tiny["eval_batch_size"]
    timings = re.findall(r"kv_cache=(True|False): ([\d.]+) s, ([\d.]+) users/s", out)
    assert [t[0] for t in timings] == ["True", "False"]
    for _, seconds, rate in timings:
        assert agrees(rate, users, seconds)
    assert "same items with and without cache: True" in out


def test_inference_speed_rates_are_its_counts_over_its_seconds(tiny_files, tmp_path, capsys):
    """A checkpoint (config inside, as training writes it) of the tiny TIGER, untrained."""
    from recbole_etegrec.model.tiger import TIGER
    from tests.conftest import build

    path, tiny = tiny_files
    config, (train, _, _) = build("TIGER", tiny)
    model = TIGER(config, train._dataset)
    checkpoint = tmp_path / "TIGER-tiny.pth"
    torch.save({"config": config, "state_dict": model.state_dict(), "other_parameter": model.other_parameter()},
               checkpoint)
    out = tmp_path / "inference_speed.md"
    argv = ["--checkpoint", str(checkpoint), "--users", "32", "--candidates", "7", "--likelihood_users", "4",
            "--max_batches", "2", "--out", str(out)]
    assert load_script("inference_speed").main(argv) == 0
    stdout, text = capsys.readouterr().out, out.read_text()
    assert stdout == text
    rows = {r[0]: r for r in table_rows(text)[1:]}
    valid, same, every, cached, uncached = (rows[k] for k in (
        "validation (valid loader, full_sort_predict)", "recommend_batch on the validation histories",
        "recommend --all_users (top 10)", "likelihood, KV cache", "likelihood, no KV cache"))
    users = int(valid[1].split()[0])
    assert 0 < users <= 2 * tiny["eval_batch_size"] and every[1] == same[1] == f"{users} users"
    assert agrees(re.fullmatch(r"([\d.]+)x validation's users/s", same[4]).group(1), same[3], valid[3])
    assert cached[1] == uncached[1] == f"{4 * 8} rows" and "4 users x 8 candidates" in cached[4]
    for row in rows.values():
        assert agrees(row[3], int(row[1].split()[0]), row[2]), row
    ratio = re.match(r"([\d.]+)x validation's users/s; mean history [\d.]+ items vs validation's [\d.]+$",
                     every[4]).group(1)
    assert agrees(ratio, every[3], valid[3])
    assert float(re.search(r"cached pass ([\d.e+-]+)", uncached[4]).group(1)) < 1e-4


def test_memory_7b_terms_add_up(tmp_path, capsys):
    out = tmp_path / "memory_7b.md"
    assert load_script("memory_7b").main(["--out", str(out)]) == 0
    text = out.read_text()
    assert text.split("\n\n", 2)[2] in capsys.readouterr().out
    trainable, lora_gb, frozen, frozen_gb = re.search(
        r"Parameters: ([\d,]+) trainable \(LoRA, fp32, ([\d.]+) GB\), ([\d,]+) frozen \(([\d.]+) GB\)", text).groups()
    # LoRA r 64 on q/k/v/o of 32 layers, each an (r x 4096) + (4096 x r) pair; fp32 adapters, bf16 base
    assert int(trainable.replace(",", "")) == 32 * 4 * 64 * (4096 + 4096)
    assert agrees(lora_gb, int(trainable.replace(",", "")) * 4, 1e9)
    assert agrees(frozen_gb, int(frozen.replace(",", "")) * 2, 1e9)
    rows = [r for r in table_rows(text) if r[0][0].isdigit()]
    assert len(rows) == 6
    for row in rows:
        terms, peak = row[2:7], row[7].strip("*")
        assert row[2] == frozen_gb
        low = sum(interval(t)[0] for t in terms)
        high = sum(interval(t)[1] for t in terms)
        assert interval(peak)[0] <= high and low <= interval(peak)[1], row
