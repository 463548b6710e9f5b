"""Plugin versions of RecBole's ``create_dataset`` / ``data_preparation``.

``create_dataset`` checks the atomic files first and applies ``--debug``; ``data_preparation``
hands code models (``uses_item_codes = True`` on the config's model class) the code-sequence
loaders and everything else RecBole's own loaders.
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
)
from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.validation import check_topk_items

if TYPE_CHECKING:
    from recbole.data.dataloader import AbstractDataLoader
    from recbole.data.dataset import Dataset


def create_dataset(config) -> "Dataset":
    check_inter_file(config)
    dataset = recbole_create_dataset(config)
    drop_duplicate_interactions(dataset)
    if config["debug"]:
        dataset = keep_first_users(dataset, config["debug_samples"])
    check_topk_items(config, dataset)  # the first place the item count is known; before any training
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
    if not getattr(model_class, "uses_item_codes", False):
        return recbole_data_preparation(config, dataset)
    for phase in ("valid", "test"):
        if config["eval_args"]["mode"][phase] != "full":
            raise EtegrecError(
                f"{config['model']} ranks by beam search over all items: set eval_args.mode to 'full'"
            )
    train_mode = config["train_mode"]
    if train_mode not in model_class.train_modes:
        raise EtegrecError(f"config key 'train_mode' is {train_mode!r}, but {config['model']} trains in "
                           f"{' or '.join(model_class.train_modes)} mode: set train_mode to one of them")
    built = dataset.build()
    samplers = create_samplers(config, dataset, built)
    slot = CodeTableSlot()
    train = CodeSeqTrainDataLoader(config, built[0], samplers[0], shuffle=config["shuffle"], slot=slot,
                                   train_mode=train_mode)
    valid = CodeSeqFullSortEvalDataLoader(config, built[1], samplers[1], shuffle=False, slot=slot)
    test = CodeSeqFullSortEvalDataLoader(config, built[2], samplers[2], shuffle=False, slot=slot)
    return train, valid, test
