"""Using a trained checkpoint: ``recommend`` by user and by item tokens, unknown tokens, the
plugin's ``load_data_and_model`` + RecBole's ``full_sort_topk`` parity, loading without retraining.

One tiny ETEGRec and one tiny TIGER are trained for one epoch (module fixtures) and reused."""
import json
import os
import subprocess
import sys

import pytest
import torch
from recbole.utils.case_study import full_sort_topk

from recbole_etegrec import inference
from recbole_etegrec.commands.recommend import main
from recbole_etegrec.quick_start import run
from recbole_etegrec.recommend import recommend
from tests.test_tiger import TINY_T5

ETEGREC = {"epochs": 1, "cycle": 1, "finetune_epochs": 0, "warm_epoch": 1, "debug_samples": 25}
TIGER = {**TINY_T5, "epochs": 1, "debug_samples": 25, "MAX_ITEM_LIST_LENGTH": 5}


@pytest.fixture(scope="module")
def checkpoints(tiny_config_dict):
    """{model: checkpoint path} after one epoch each (the tokenizer cache lives in tmp)."""
    out = {}
    for model, extra in (("ETEGRec", ETEGREC), ("TIGER", TIGER)):
        result = run(model, "ml-100k", config_dict={**tiny_config_dict, **extra}, evaluate_test=False)
        out[model] = result["saved_model_file"]
    return out


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return {m: inference.load_data_and_model(path, state="warning") for m, path in checkpoints.items()}


def test_plugin_load_path_matches_recbole_full_sort_topk(loaded):
    """RecBole's case-study API on the plugin's load_data_and_model == recommend() on the same history."""
    for name, (config, model, _dataset, _, _, test_data) in loaded.items():
        feat = test_data.dataset.inter_feat
        uid, lists, lengths = feat["user_id"], feat["item_id_list"], feat["item_length"]
        for row in range(3):
            scores, items = full_sort_topk([int(uid[row])], model, test_data, k=5, device=config["device"])
            history = [int(i) for i in lists[row, : int(lengths[row])]]
            ours = recommend(model, config, history, topk=5)
            assert [i for i, _ in ours] == items[0].tolist(), name
            assert torch.allclose(torch.tensor([s for _, s in ours]), scores[0].float()), name
            assert all(torch.isfinite(scores[0])), name  # 5 <= num_beams: all are real beams


def test_recommend_by_user_json_uses_the_whole_history(checkpoints, loaded, capsys):
    config, _, dataset, _, _, test_data = loaded["ETEGRec"]
    feat = test_data.dataset.inter_feat
    uid = int(feat["user_id"][0])
    user = dataset.field2id_token["user_id"][uid]
    assert main(["--checkpoint", checkpoints["ETEGRec"], "--user", user, "--json", "--topk", "10"]) == 0
    result = json.loads(capsys.readouterr().out)
    to_token = dataset.field2id_token["item_id"]
    test_history = [to_token[i] for i in feat["item_id_list"][0, : int(feat["item_length"][0])]]
    # all interactions: the test split's history followed by the test target itself
    assert result["history"][-1] == to_token[int(feat["item_id"][0])]
    assert result["history"][:-1] == test_history[len(test_history) - (len(result["history"]) - 1):]
    assert len(result["history"]) == min(result["history_length"], config["MAX_ITEM_LIST_LENGTH"])
    # every interaction counts, the user's first item (never a training target) included
    raw = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    with open(raw) as f:
        assert result["history_length"] == sum(line.split("\t")[0] == user for line in f)
    recs = result["recommendations"]
    assert [r["rank"] for r in recs] == list(range(1, 11))
    assert len({r["item"] for r in recs}) == 10 and all(r["item"] in to_token for r in recs)
    assert all(a["score"] >= b["score"] for a, b in zip(recs, recs[1:]))
    assert all(r["title"] for r in recs)  # ml-100k's .item has movie_title


def test_recommend_by_items_table_and_exclude_history(checkpoints, loaded, capsys):
    config, model, dataset, *_ = loaded["TIGER"]
    tokens = ["242", "302", "377"]
    assert main(["--checkpoint", checkpoints["TIGER"], "--items", ",".join(tokens), "--topk", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "TIGER on ml-100k: top 4 for the given items" in lines[0]
    assert lines[1].split()[:3] == ["rank", "item", "score"]
    ids = [int(i) for i in dataset.token2id("item_id", tokens)]
    expected = recommend(model, config, ids, topk=4)
    assert [line.split()[1] for line in lines[2:]] == [dataset.field2id_token["item_id"][i] for i, _ in expected]
    kept = recommend(model, config, ids, topk=10, exclude_history=True)
    assert len(kept) == 10 and not set(ids) & {i for i, _ in kept}


def test_unknown_item_tokens_error_or_skip(checkpoints, capsys):
    path = checkpoints["ETEGRec"]
    assert main(["--checkpoint", path, "--items", "242,NOPE1,302,NOPE2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown item token(s) NOPE1, NOPE2")
    assert "--skip_unknown" in err[0]
    assert main(["--checkpoint", path, "--items", "242,NOPE1,302", "--skip_unknown", "--json"]) == 0
    captured = capsys.readouterr()
    assert "skipped unknown item token(s) NOPE1" in captured.err
    result = json.loads(captured.out)
    assert result["skipped"] == ["NOPE1"] and result["history"] == ["242", "302"]
    assert main(["--checkpoint", path, "--user", "no-such-user"]) == 2
    assert "unknown user 'no-such-user'" in capsys.readouterr().err


def test_loading_without_the_tokenizer_cache_never_retrains(checkpoints, loaded, tmp_path, monkeypatch):
    """A checkpoint moved away from its tokenizer cache: the tokenizer comes from the checkpoint."""
    import recbole_etegrec.stages.item_tokenizer as pretrain

    def no_training(*args, **kwargs):
        raise AssertionError("inference must not pretrain a tokenizer")

    monkeypatch.setattr(pretrain, "embed_and_pretrain", no_training)
    for name, path in checkpoints.items():
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint["config"]["checkpoint_dir"] = str(tmp_path / f"elsewhere-{name}")
        moved = tmp_path / f"{name}.pth"
        torch.save(checkpoint, moved)
        config, model, *_ = inference.load_data_and_model(str(moved), state="error")
        assert not (tmp_path / f"elsewhere-{name}").exists()
        ref_config, ref_model, *_ = loaded[name]
        assert torch.equal(model.code_table.codes, ref_model.code_table.codes)
        assert recommend(model, config, [5, 7, 9], topk=5) == recommend(ref_model, ref_config, [5, 7, 9], topk=5)


def test_cli_missing_checkpoint_is_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "recbole_etegrec.recommend", "--checkpoint",
                             str(tmp_path / "nope.pth"), "--user", "1"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint '{tmp_path / 'nope.pth'}' does not exist: pass a file a training run wrote "
        "(saved/<Model>-<time>.pth)"]


def read_table(path):
    import pandas as pd

    if str(path).endswith(".parquet"):
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"user": str, "item": str})


@pytest.mark.parametrize("name,suffix", [("ETEGRec", "csv"), ("TIGER", "parquet")])
def test_all_users_file_equals_per_user_recommend(name, suffix, checkpoints, loaded, tmp_path, capsys):
    """--all_users: exactly users x K rows, and three sampled users' rows equal the per-user command's."""
    _, _, dataset, *_ = loaded[name]
    out = tmp_path / f"recs.{suffix}"
    assert main(["--checkpoint", checkpoints[name], "--all_users", "--topk", "5", "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    table = read_table(out)
    ids = sorted(set(dataset.inter_feat["user_id"].tolist()))  # every user with interactions (the debug subset)
    users = [str(dataset.field2id_token["user_id"][u]) for u in ids]
    assert len(table) == len(users) * 5 and set(table["user"]) == set(users)
    assert list(table.columns) == ["user", "rank", "item", "score"]
    assert summary[-1].startswith(f"{name} on ml-100k: wrote {len(users) * 5} rows")
    for user in [users[0], users[len(users) // 2], users[-1]]:
        assert main(["--checkpoint", checkpoints[name], "--user", user, "--topk", "5", "--json"]) == 0
        single = json.loads(capsys.readouterr().out)["recommendations"]
        rows = table[table["user"] == user].sort_values("rank")
        assert rows["rank"].tolist() == [1, 2, 3, 4, 5]
        assert rows["item"].tolist() == [r["item"] for r in single]
        assert rows["score"].tolist() == pytest.approx([r["score"] for r in single], abs=1e-4)


def test_candidates_are_scored_by_likelihood_and_ranked(checkpoints, loaded, tmp_path, capsys):
    """--candidates: each user's beam top-5 handed back shuffled (plus one unknown row) comes back in
    the beam's order with the beam's scores: the likelihood path and the beam rank by one model."""
    import pandas as pd

    recs = tmp_path / "recs.csv"
    assert main(["--checkpoint", checkpoints["ETEGRec"], "--all_users", "--topk", "5", "--out", str(recs)]) == 0
    capsys.readouterr()
    beam = read_table(recs)
    beam = beam[beam["user"].isin(beam["user"].unique()[:4])]
    cands = beam[["user", "item"]].sample(frac=1.0, random_state=0)
    cands = pd.concat([cands, pd.DataFrame({"user": ["no-such-user"], "item": [cands["item"].iloc[0]]})])
    path = tmp_path / "cands.csv"
    cands.to_csv(path, index=False)
    scored = tmp_path / "scored.csv"
    args = ["--checkpoint", checkpoints["ETEGRec"], "--candidates", str(path), "--out", str(scored)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown user token(s) in dataset 'ml-100k' (no-such-user)" in err[0]
    assert not scored.exists()
    assert main(args + ["--skip_unknown"]) == 0
    assert "skipped 1 row(s) with unknown user token(s) no-such-user" in capsys.readouterr().err
    got = read_table(scored)
    assert len(got) == len(beam)
    for user, rows in beam.groupby("user", sort=False):
        mine = got[got["user"] == user].sort_values("rank")
        assert mine["item"].tolist() == rows.sort_values("rank")["item"].tolist()
        assert mine["score"].tolist() == pytest.approx(rows.sort_values("rank")["score"].tolist(), abs=1e-4)


def test_batch_options_are_checked_before_loading(checkpoints, tmp_path, capsys):
    path = checkpoints["TIGER"]
    cases = [
        (["--all_users"], "--all_users and --candidates write a file: pass --out"),
        (["--all_users", "--out", str(tmp_path / "recs.txt")], "must end in .csv or .parquet"),
        (["--user", "1", "--out", str(tmp_path / "r.csv")], "--out is for --all_users and --candidates"),
        (["--candidates", str(tmp_path / "none.csv"), "--out", str(tmp_path / "r.csv")], "does not exist"),
    ]
    (tmp_path / "bad.csv").write_text("u,i\n1,2\n")
    cases.append((["--candidates", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "r.csv")],
                  "has no user and no item column"))
    for extra, message in cases:
        assert main(["--checkpoint", path, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)


def test_recommend_after_reordering_the_inter_file_returns_the_same_items(checkpoints, loaded, tmp_path, capsys):
    """RecBole numbers items by first appearance: the reordered file gets other ids, which the checkpoint's
    token maps undo (data/identity.py), so the same user gets the same items and scores."""
    from tests.test_identity import reordered_copy

    config, *_ = loaded["ETEGRec"]
    checkpoint = torch.load(checkpoints["ETEGRec"], map_location="cpu", weights_only=False)
    assert checkpoint["data"]["items"][:2] == ["[PAD]", "242"]  # the maps travel in the checkpoint
    checkpoint["config"]["data_path"] = reordered_copy(config, tmp_path / "data")  # a built config: used as is
    moved = tmp_path / "moved.pth"
    torch.save(checkpoint, moved)
    user = checkpoint["data"]["users"][3]
    outputs = []
    for path in (checkpoints["ETEGRec"], moved):
        assert main(["--checkpoint", str(path), "--user", user, "--json", "--topk", "10"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0]["history"] == outputs[1]["history"]
    assert [r["item"] for r in outputs[0]["recommendations"]] == [r["item"] for r in outputs[1]["recommendations"]]
    assert [r["score"] for r in outputs[1]["recommendations"]] == pytest.approx(
        [r["score"] for r in outputs[0]["recommendations"]], abs=1e-5)
