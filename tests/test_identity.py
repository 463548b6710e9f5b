"""Checkpoints know their data (``data/identity.py``): the digest ignores line order, a dataset
read from a reordered ``.inter`` is renumbered to the saved ids, other tokens are one error, and
a resume refuses other interactions."""
import shutil

import pytest

from recbole_etegrec.config import Config
from recbole_etegrec.data import create_dataset
from recbole_etegrec.data.identity import align_to_checkpoint, check_same_data, data_identity
from recbole_etegrec.errors import EtegrecError


def reordered_copy(config, folder, retime=False, extra_line=None):
    """ml-100k's atomic files in ``folder``/ml-100k (returned), with the .inter lines reordered (header
    kept); ``retime`` moves one interaction by a second (the same users and items, other interactions)."""
    source = config["data_path"]  # RecBole appends the dataset name to data_path
    target = folder / "ml-100k"
    target.mkdir(parents=True)
    for suffix in ("item", "user"):
        shutil.copy(f"{source}/ml-100k.{suffix}", target / f"ml-100k.{suffix}")
    lines = open(f"{source}/ml-100k.inter").read().splitlines()
    # users in reverse token order, each user's lines in file order: other first appearances (ids),
    # the same sequences (RecBole breaks equal timestamps by line order, and ml-100k has many)
    body = sorted(lines[1:], key=lambda line: line.split("\t")[0], reverse=True)
    if retime:
        column = [c.partition(":")[0] for c in lines[0].split("\t")].index("timestamp")
        values = body[0].split("\t")
        values[column] = str(int(float(values[column])) + 1)
        body[0] = "\t".join(values)
    if extra_line:
        body.append(extra_line)
    (target / "ml-100k.inter").write_text("\n".join([lines[0], *body]) + "\n")
    return str(target)


def dataset(data_path=None):
    """ml-100k, or its copy in ``data_path`` (RecBole always points ml-100k's data_path at its wheel:
    the folder is set on the built config)."""
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"state": "ERROR"})
    if data_path:
        config["data_path"] = data_path
    return create_dataset(config)


@pytest.fixture(scope="module")
def original():
    return dataset()


def rows(ds):
    """The interactions as (user token, item token, time), sorted."""
    feat = ds.inter_feat  # a pandas frame until the split builds the dataset
    users = ds.field2id_token[ds.uid_field][feat[ds.uid_field].to_numpy()]
    items = ds.field2id_token[ds.iid_field][feat[ds.iid_field].to_numpy()]
    return sorted(zip(users.tolist(), items.tolist(), feat[ds.time_field].tolist()))


def test_reordered_lines_get_the_checkpoint_ids(original, tmp_path):
    saved = data_identity(original)
    moved = dataset(reordered_copy(original.config, tmp_path))
    assert list(moved.field2id_token["item_id"]) != saved["items"]  # RecBole numbers by first appearance
    assert data_identity(moved)["digest"] == saved["digest"]  # the digest ignores line order
    before = rows(moved)
    align_to_checkpoint(moved, saved, "checkpoint 'x.pth'")
    assert list(moved.field2id_token["item_id"]) == saved["items"]
    assert list(moved.field2id_token["user_id"]) == saved["users"]
    assert all(moved.field2token_id["item_id"][t] == i for i, t in enumerate(saved["items"]))
    assert rows(moved) == before  # every interaction kept, now under the checkpoint's ids
    # the same (user id, item id) pairs as the original: a model indexes the same rows
    pairs = lambda ds: sorted(zip(ds.inter_feat["user_id"].tolist(), ds.inter_feat["item_id"].tolist()))  # noqa: E731
    assert pairs(moved) == pairs(original)


def test_other_tokens_are_one_error(original, tmp_path):
    saved = data_identity(original)
    other = dataset(reordered_copy(original.config, tmp_path, extra_line="1\tNEW-ITEM\t3\t1.0"))
    with pytest.raises(EtegrecError, match=r"checkpoint 'x.pth' was trained on other data: dataset 'ml-100k' has "
                                           r"item tokens 1 not in the checkpoint \(NEW-ITEM\)"):
        align_to_checkpoint(other, saved, "checkpoint 'x.pth'")


def test_resume_refuses_other_interactions(original, tmp_path):
    saved = data_identity(original)
    fewer = dataset(reordered_copy(original.config, tmp_path, retime=True))  # the same users and items
    align_to_checkpoint(fewer, saved, "resume_file 'r.pth'")  # ids aligned, interactions differ: a warning
    with pytest.raises(EtegrecError, match=r"resume_file 'r.pth' was trained on other interactions"):
        check_same_data(saved, data_identity(fewer), "resume_file 'r.pth'")
    check_same_data(saved, data_identity(original), "resume_file 'r.pth'")  # the same data: no error
    assert (original.inter_feat["item_id"] == dataset().inter_feat["item_id"]).all()  # deterministic ids
