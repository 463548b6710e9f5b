"""Tests for ``python -m recbole_etegrec.data.prepare``: both source kinds, reruns, and bad input."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_etegrec.commands.prepare import main
from recbole_etegrec.data.checks import check_inter_file
from recbole_etegrec.data.prepare import prepare
from recbole_etegrec.errors import EtegrecError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ITEM_HEADER = "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tdescription:token_seq"


def lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


def write_lcrec(folder, maps=True, text=True):
    """A tiny LC-Rec folder: 3 users, items 0-3 used, item 4 only in item.json."""
    folder.mkdir()
    seqs = {"0": [0, 1, 2], "1": [2, 0], "2": [1, 3, 0, 2]}
    (folder / "Toy.inter.json").write_text(json.dumps(seqs))
    if maps:
        (folder / "Toy.item2id").write_text("".join(f"A{i}\t{i}\n" for i in range(5)))
        (folder / "Toy.user2id").write_text("U0\t0\nU1\t1\nU2\t2\n")
    if text:
        meta = {
            "0": {"title": 'Red "Guitar"\tpick', "description": "line one\nline two",
                  "brand": "Fen der", "categories": "Music,Guitar Parts"},
            "1": {"title": "Drum", "description": "", "brand": "", "categories": ""},
            "2": {"title": "Bass", "description": "Low.", "brand": "B", "categories": "Music"},
            "3": {"title": "Flute"},
            "4": {"title": "Unused", "description": "", "brand": "", "categories": ""},
        }
        (folder / "Toy.item.json").write_text(json.dumps(meta))
    return folder


def write_gz(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def write_amazon(folder):
    """Reviews out of time order, a repeated (u1, i1), a tie in u2, and a 2-core cascade:
    i5 has one review (dropped) -> u4 is left with one (dropped); u3 has one (dropped) -> i3 too."""
    folder.mkdir()
    reviews = [("u1", "i1", 400), ("u2", "i2", 50), ("u1", "i2", 100), ("u3", "i3", 10),
               ("u1", "i3", 200), ("u2", "i1", 50), ("u1", "i1", 300), ("u4", "i1", 70),
               ("u4", "i5", 80)]
    write_gz(folder / "Foo_5.json.gz", [
        {"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0} for u, i, t in reviews])
    write_gz(folder / "meta_Foo.json.gz", [
        {"asin": "i1", "title": "Amp\tOne", "brand": "Acme", "category": ["Musical Instruments", "Amps"],
         "description": ["Loud.", "Very\nloud."]},
        "{'asin': 'i2', 'title': 'Cable', 'brand': 'Wire Co', 'category': [], 'description': 'Long'}",
        {"asin": "i3", "title": "Removed by k-core"},
    ])
    return folder


def test_lcrec_json(tmp_path):
    stats = prepare(write_lcrec(tmp_path / "src"), "Toy", out=tmp_path / "out")
    assert stats["users"] == 3 and stats["items"] == 4 and stats["interactions"] == 9
    assert lines(stats["inter_path"]) == [
        "user_id:token\titem_id:token\ttimestamp:float",
        "U0\tA0\t0", "U0\tA1\t1", "U0\tA2\t2",
        "U1\tA2\t0", "U1\tA0\t1",
        "U2\tA1\t0", "U2\tA3\t1", "U2\tA0\t2", "U2\tA2\t3",
    ]
    assert lines(stats["item_path"]) == [  # A4 never occurs, so it must not grow the catalogue
        ITEM_HEADER,
        "A0\tRed ''Guitar'' pick\tFen der\tMusic Guitar_Parts\tline one line two",
        "A1\tDrum\t\t\t",
        "A2\tBass\tB\tMusic\tLow.",
        "A3\tFlute\t\t\t",
    ]
    check_inter_file({"dataset": "Toy", "data_path": str(tmp_path / "out" / "Toy"),
                      "field_separator": "\t"})


def test_lcrec_without_maps_or_text_uses_indices_and_skips_item(tmp_path):
    out = tmp_path / "out"
    (out / "Toy").mkdir(parents=True)
    (out / "Toy" / "Toy.item").write_text("stale\n")
    stats = prepare(write_lcrec(tmp_path / "src", maps=False, text=False) / "Toy.inter.json", "Toy", out)
    assert lines(stats["inter_path"])[1:3] == ["0\t0\t0", "0\t1\t1"]
    assert stats["item_path"] is None and not (out / "Toy" / "Toy.item").exists()


def test_amazon_2018_kcore_dedup_and_time_order(tmp_path):
    stats = prepare(write_amazon(tmp_path / "raw"), "Foo", out=tmp_path / "out", kcore=2)
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 2, 4)
    assert lines(stats["inter_path"]) == [
        "user_id:token\titem_id:token\ttimestamp:float",
        "u1\ti2\t100", "u1\ti1\t300",  # (u1, i1) at 400 is a repeat: the earliest review is kept
        "u2\ti2\t50", "u2\ti1\t50",  # same time: file order
    ]
    assert lines(stats["item_path"]) == [
        ITEM_HEADER,
        "i2\tCable\tWire Co\t\tLong",  # a Python-literal meta line
        "i1\tAmp One\tAcme\tMusical_Instruments Amps\tLoud. Very loud.",
    ]


def test_rerun_gives_identical_files_and_leaves_no_temp_files(tmp_path):
    src, out = write_lcrec(tmp_path / "src"), tmp_path / "out"
    first = prepare(src, "Toy", out)
    before = {p: Path(p).read_bytes() for p in (first["inter_path"], first["item_path"])}
    second = prepare(src, "Toy", out)
    assert second == first
    assert {p: Path(p).read_bytes() for p in before} == before
    assert sorted(p.name for p in (out / "Toy").iterdir()) == ["Toy.inter", "Toy.item", "Toy.yaml"]


def test_main_prints_summary(tmp_path, capsys):
    assert main([str(write_lcrec(tmp_path / "src")), "--name", "Toy", "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "3 users, 4 items, 9 interactions" in printed and "Toy.inter" in printed
    assert "Toy.yaml (item_emb_source: text; evaluation protocol: properties/protocol.yaml)" in printed


def _broken_sources(tmp_path):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "notes.txt").write_text("hello")
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "Toy.inter.json").write_text('{"0": [1, 2')
    no_time = tmp_path / "notime"
    no_time.mkdir()
    write_gz(no_time / "Foo_5.json.gz", [{"reviewerID": "u1", "asin": "i1"}])
    return [(tmp_path / "missing", "does not exist"), (wrong, "holds neither"),
            (bad_json, "malformed JSON"), (no_time, "lacks unixReviewTime")]


def test_bad_input_raises_helpful_error_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    for source, problem in _broken_sources(tmp_path):
        with pytest.raises(EtegrecError) as err:
            prepare(source, "Toy", out)
        message = str(err.value)
        assert problem in message and str(source.name) in message
        assert any(fix in message for fix in ("pass a folder", "re-download", "not an Amazon"))
        assert not out.exists()


def test_cli_bad_input_prints_one_error_line_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "recbole_etegrec.data.prepare",
                             str(tmp_path / "missing"), "--name", "Toy"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "dataset").exists()


@pytest.mark.skipif(not (SHARED_DATA / "Scientific").is_dir(), reason="no ../shared/data")
def test_real_scientific_counts(tmp_path):
    stats = prepare(SHARED_DATA / "Scientific", "Scientific", out=tmp_path)
    assert (stats["users"], stats["items"], stats["interactions"]) == (8317, 4344, 58492)
    assert len(lines(stats["item_path"])) == 4344 + 1


# -- a freshly prepared dataset runs under the project's protocol, with no hand-written YAML ----
PROTOCOL = {"MAX_ITEM_LIST_LENGTH": 20, "topk": [5, 10], "metrics": ["Recall", "NDCG"],
            "valid_metric": "NDCG@10"}


def _config(model, name, out, **extra):
    from recbole_etegrec.config import Config

    return Config(model=model, dataset=name, config_dict={"data_path": str(out), **extra})


@pytest.mark.parametrize("text, source", [(True, "text"), (False, "sasrec")])
def test_prepared_dataset_gets_the_protocol_and_its_item_emb_source(tmp_path, text, source):
    out = tmp_path / "out"
    stats = prepare(write_lcrec(tmp_path / "src", text=text), "Toy", out)
    assert stats["item_emb_source"] == source
    config = _config("ETEGRec", "Toy", out)
    assert {k: config[k] for k in PROTOCOL} == PROTOCOL
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert config["eval_args"]["order"] == "TO" and config["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert "timestamp" in config["load_col"]["inter"]
    assert config["item_emb_source"] == source
    assert config["protocol_file"].endswith(str(Path("properties") / "protocol.yaml"))
    assert config["dataset_config_file"] == str(out / "Toy" / "Toy.yaml")
    assert "protocol.yaml" in str(config) and "Toy.yaml" in str(config)  # the run's log names them
    assert _config("ETEGRec", "Toy", out, item_emb_source="file")["item_emb_source"] == "file"  # user wins


def test_shipped_datasets_keep_their_property_file():
    from recbole_etegrec.config import Config

    config = Config(model="SASRec", dataset="ml-100k")
    assert config["protocol_file"].endswith(str(Path("properties") / "dataset" / "ml-100k.yaml"))
    assert config["dataset_config_file"] is None


def test_sasrec_runs_on_a_prepared_dataset_with_the_protocol_metrics(tmp_path):
    from recbole_etegrec.quick_start import run

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()  # 40 users over 30 items: enough items for R/N@10
    seqs = {str(u): [(u * 7 + k * 3) % 30 for k in range(6)] for u in range(40)}
    (src / "Toy.inter.json").write_text(json.dumps(seqs))
    prepare(src, "Toy", out)
    result = run("SASRec", "Toy", config_dict={"data_path": str(out), "epochs": 1, "show_progress": False,
                                               "state": "WARNING", "checkpoint_dir": str(tmp_path / "saved")})
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}


# -- ids RecBole's atomic files cannot hold: refused with the record and a count, nothing written --
@pytest.mark.parametrize("seqs,fragment", [
    ({"0": [0, True, 1, False]}, '2 records have an id RecBole cannot hold (first: user "0": item 1 is true)'),
    ({"0": [0, None]}, "1 records have an id RecBole cannot hold (first: user \"0\": item 1 is null)"),
    ({"a\tb": [0, 1], "": [1]},
     "2 records have an id RecBole cannot hold (first: user \"a\\tb\": the user holds a TAB"),
    ({"0": [0, 1.5]}, "(first: user \"0\": item 1 is 1.5)"),
], ids=["json_booleans", "null_item", "tab_and_empty_user", "float_item"])
def test_lcrec_ids_that_cannot_be_written_are_refused(tmp_path, seqs, fragment):
    src = tmp_path / "src"
    src.mkdir()
    (src / "Toy.inter.json").write_text(json.dumps(seqs))
    with pytest.raises(EtegrecError) as err:
        prepare(src, "Toy", tmp_path / "out")
    assert fragment in str(err.value) and "fix the source or drop those records" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("records,fragment", [
    ([{"reviewerID": None, "asin": "i1", "unixReviewTime": 1},
      {"reviewerID": "u1", "asin": "i1", "unixReviewTime": 2}],
     "1 records have an id RecBole cannot hold (first: line 1: reviewerID is null)"),
    ([{"reviewerID": "u1", "asin": "i\n1", "unixReviewTime": 1},
      {"reviewerID": "u\t2", "asin": "i1", "unixReviewTime": 2},
      {"reviewerID": "u3", "asin": ["i1"], "unixReviewTime": 3}],
     "3 records have an id RecBole cannot hold (first: line 1: asin holds a TAB or line break ('i\\n1'))"),
], ids=["null_user", "newline_tab_list"])
def test_amazon_ids_that_cannot_be_written_are_refused(tmp_path, records, fragment):
    src = tmp_path / "raw"
    src.mkdir()
    write_gz(src / "Foo_5.json.gz", records)
    with pytest.raises(EtegrecError) as err:
        prepare(src, "Foo", tmp_path / "out", kcore=1)
    assert fragment in str(err.value)
    assert not (tmp_path / "out").exists()


def test_integer_ids_are_written_as_they_are(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    write_gz(src / "Foo_5.json.gz", [{"reviewerID": 7, "asin": 1001, "unixReviewTime": 1},
                                     {"reviewerID": 7, "asin": 1002, "unixReviewTime": 2}])
    stats = prepare(src, "Foo", tmp_path / "out", kcore=1)
    assert lines(stats["inter_path"])[1:] == ["7\t1001\t1", "7\t1002\t2"]
