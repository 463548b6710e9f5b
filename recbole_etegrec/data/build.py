"""Plugin versions of RecBole's ``create_dataset`` / ``data_preparation``.

``create_dataset`` checks the atomic files first and applies ``--debug``; ``data_preparation``
hands code models (``uses_item_codes = True`` on the config's model class) the code-sequence
loaders (RecBole's sampled-evaluation loaders for ``uni100``-style modes) and everything else
RecBole's own loaders.
"""
from logging import getLogger
from typing import TYPE_CHECKING, Tuple

from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.utils import create_samplers

from recbole_etegrec.data.checks import check_inter_file
from recbole_etegrec.data.dataloader import (
    CodeSeqFullSortEvalDataLoader,
    CodeSeqTrainDataLoader,
    CodeTableSlot,
    UserBatchNegSampleEvalDataLoader,
)
from recbole_etegrec.data.identity import align_to_checkpoint, warn_if_other_interactions
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.validation import check_topk_items

if TYPE_CHECKING:
    from recbole.data.dataloader import AbstractDataLoader
    from recbole.data.dataset import Dataset


def create_dataset(config, identity=None, source=None) -> "Dataset":
    """RecBole's dataset, checked, deduplicated and (``--debug``) cut; with a checkpoint's
    ``identity`` renumbered to its ids first (``data/identity.py``), so that a debug subset (the
    first users by id) is the checkpoint's too."""
    check_inter_file(config)
    dataset = recbole_create_dataset(config)
    drop_duplicate_interactions(dataset)
    align_to_checkpoint(dataset, identity, source)
    if config["debug"]:
        dataset = keep_first_users(dataset, config["debug_samples"])
    check_topk_items(config, dataset)  # the first place the item count is known; before any training
    warn_if_other_interactions(dataset, identity, source)
    return dataset


def drop_duplicate_interactions(dataset) -> int:
    """Duplicate rule: interactions equal in every loaded column (user, item, timestamp, ...) are
    one interaction written twice (a copy error, not a re-consumption, which has its own time);
    the first is kept, the rest dropped before the split, and their count is logged as a warning."""
    inter = dataset.inter_feat
    duplicated = inter.duplicated(keep="first")
    count = int(duplicated.sum())
    if count:
        dataset.inter_feat = inter[~duplicated].reset_index(drop=True)
        getLogger().warning(f"{dataset.dataset_name}.inter: {count} duplicated interactions (equal in every "
                            "loaded column) dropped, the first of each kept")
    return count


def keep_first_users(dataset, n_users) -> "Dataset":
    """Keep the interactions of the first ``n_users`` users (by internal id) for a fast sanity run."""
    uid = dataset.inter_feat[dataset.uid_field]  # a pandas Series until dataset.build()
    keep = sorted(uid.unique())[:n_users]
    dataset.inter_feat = dataset.inter_feat[uid.isin(keep)].reset_index(drop=True)
    getLogger().info(f"debug: kept {len(keep)} users, {len(dataset.inter_feat)} interactions")
    return dataset


def data_preparation(config, dataset) -> Tuple["AbstractDataLoader", "AbstractDataLoader", "AbstractDataLoader"]:
    model_class = config.model_class  # set by RecBole's Config; no model module is imported here
    users = dataset.inter_feat[dataset.uid_field].nunique()  # before build() turns rows into samples
    if not getattr(model_class, "uses_item_codes", False):
        return check_split(dataset, users, *recbole_data_preparation(config, dataset))
    train_mode = config["train_mode"]
    if train_mode not in model_class.train_modes:
        raise EtegrecError(f"config key 'train_mode' is {train_mode!r}, but {config['model']} trains in "
                           f"{' or '.join(model_class.train_modes)} mode: set train_mode to one of them")
    built = dataset.build()
    samplers = create_samplers(config, dataset, built)
    slot = CodeTableSlot()
    train = CodeSeqTrainDataLoader(config, built[0], samplers[0], shuffle=config["shuffle"], slot=slot,
                                   train_mode=train_mode)
    valid = eval_loader(config, "valid", built[1], samplers[1], slot)
    test = eval_loader(config, "test", built[2], samplers[2], slot)
    return check_split(dataset, users, train, valid, test)


def check_split(dataset, users, train, valid, test) -> Tuple[
        "AbstractDataLoader", "AbstractDataLoader", "AbstractDataLoader"]:
    """Users too short for the split (leave-one-out needs a few interactions per user) only train:
    their count is a warning; a split whose validation or test part is empty is one error line
    (RecBole would train, then fail at evaluation)."""
    for phase, loader in (("validation", valid), ("test", test)):
        if loader is None:
            continue
        part = loader._dataset.inter_feat[dataset.uid_field].unique()
        if len(part) == 0:
            raise EtegrecError(f"{dataset.dataset_name}.inter: the {phase} split of its {users} users is empty "
                               "(leave-one-out holds out a user's last items only when the user has enough of "
                               "them): add interactions or change eval_args")
        if phase == "test" and len(part) < users:
            getLogger().warning(f"{dataset.dataset_name}.inter: {users - len(part)} of {users} users have "
                                "too few interactions to be tested (eval_args.split): training data at most")
    return train, valid, test


def eval_loader(config, phase, dataset, sampler, slot) -> "AbstractDataLoader":
    """Full ranking: code sequences for the beam search. Sampled modes (``uni100``, ``pop100``, ...):
    RecBole's loader of (history, candidate) rows, ``eval_batch_size`` users a batch, which the
    model scores with ``predict`` (the likelihood of each candidate's codes, read from the model's
    current code table)."""
    if config["eval_args"]["mode"][phase] == "full":
        return CodeSeqFullSortEvalDataLoader(config, dataset, sampler, shuffle=False, slot=slot)
    return UserBatchNegSampleEvalDataLoader(config, dataset, sampler, shuffle=False)
