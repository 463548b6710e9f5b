"""What a checkpoint knows of its data: the user and item token <-> id maps and a digest of the
interactions it was trained on.

RecBole numbers users and items in order of first appearance in ``.inter``, so the same
interactions in another line order get other ids, and a model's embeddings (or code table) would
then score other items, silently. Every checkpoint the plugin writes carries ``data_identity``;
``load_data_and_model`` (``recommend``) renumbers the current data to the checkpoint's ids
(``align_to_checkpoint``) when it holds the same users and items, and refuses other tokens with one
line; a resumed run is aligned the same way and refuses other interactions (``check_same_data``).
"""
import hashlib
from logging import getLogger
from typing import Optional

import numpy as np
import torch

from recbole_etegrec.errors import EtegrecError


def data_identity(dataset) -> dict:
    """``{"name", "user_field", "item_field", "users", "items", "digest"}`` of a dataset."""
    uid, iid = dataset.uid_field, dataset.iid_field
    return {"name": dataset.dataset_name, "user_field": uid, "item_field": iid,
            "users": [str(t) for t in dataset.field2id_token[uid]],
            "items": [str(t) for t in dataset.field2id_token[iid]],
            "digest": interactions_digest(dataset)}


def interactions_digest(dataset) -> str:
    """sha256 of the interactions as (user token, item token, time) rows, sorted: it does not depend
    on the file's line order or on the ids RecBole assigned."""
    feat, uid, iid, time = dataset.inter_feat, dataset.uid_field, dataset.iid_field, dataset.time_field
    users = dataset.field2id_token[uid][_ids(feat[uid])]
    items = dataset.field2id_token[iid][_ids(feat[iid])]
    times = _ids(feat[time]) if time and time in feat else np.zeros(len(users))
    rows = sorted(zip(users.tolist(), items.tolist(), np.asarray(times, dtype=np.float64).tolist()))
    digest = hashlib.sha256()
    for user, item, when in rows:
        digest.update(f"{user}\t{item}\t{when!r}\n".encode())
    return digest.hexdigest()


def _ids(column) -> np.ndarray:
    return column.numpy() if isinstance(column, torch.Tensor) else np.asarray(column)


def _renumber(feat, field, new_id) -> None:
    """``feat[field] = new_id[feat[field]]`` for a pandas frame (before ``build``) or an Interaction."""
    column = feat[field]
    renumbered = new_id[_ids(column)]
    feat[field] = torch.as_tensor(renumbered) if isinstance(column, torch.Tensor) else renumbered


def _token_difference(saved, current) -> str:
    extra, missing = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    parts = []
    if extra:
        parts.append(f"{len(extra)} not in the checkpoint ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})")
    if missing:
        parts.append(f"{len(missing)} of the checkpoint's missing ({', '.join(missing[:3])}"
                     f"{', ...' if len(missing) > 3 else ''})")
    return " and ".join(parts)


def align_to_checkpoint(dataset, identity: Optional[dict], source: str) -> None:
    """Renumber ``dataset`` (inside ``create_dataset``, before ``--debug`` cuts it and before the
    split) to the checkpoint's user and item ids; other tokens than the checkpoint's are one error."""
    if not identity:
        return  # a checkpoint from before data identities: ids are the data's own, as they were
    for field, key, what in ((dataset.uid_field, "users", "user"), (dataset.iid_field, "items", "item")):
        saved, current = identity[key], [str(t) for t in dataset.field2id_token[field]]
        if saved == current:
            continue
        if set(saved) != set(current):
            raise EtegrecError(f"{source} was trained on other data: dataset '{dataset.dataset_name}' has "
                               f"{what} tokens {_token_difference(saved, current)}; use the data it was trained "
                               "on, or train a new model")
        position = {token: n for n, token in enumerate(saved)}
        new_id = np.array([position[token] for token in current], dtype=np.int64)
        _renumber(dataset.inter_feat, field, new_id)
        side = "user_feat" if key == "users" else "item_feat"
        feat = getattr(dataset, side)
        if feat is not None and field in feat:  # row n describes id n
            _renumber(feat, field, new_id)
            setattr(dataset, side, feat.sort_values(field).reset_index(drop=True) if hasattr(feat, "sort_values")
                    else feat[torch.argsort(feat[field])])
        dataset.field2id_token[field] = np.array(saved)
        dataset.field2token_id[field] = position
        getLogger().info(f"{what} ids renumbered to {source}'s (the data's line order differs)")


def warn_if_other_interactions(dataset, identity: Optional[dict], source: str) -> None:
    """Same users and items, other interactions (the digest differs): one warning; histories come
    from the current data (``create_dataset`` calls it once the data is final)."""
    if identity and interactions_digest(dataset) != identity["digest"]:
        getLogger().warning(f"the interactions of dataset '{dataset.dataset_name}' differ from those {source} "
                            "was trained on (same users and items): histories come from the current data")


def check_same_data(identity: Optional[dict], current: dict, source: str) -> None:
    """Resume: the run continues on exactly the interactions it started on (ids were aligned by
    ``align_to_checkpoint`` first, so only the digest is left to compare)."""
    if identity and identity["digest"] != current["digest"]:
        raise EtegrecError(f"{source} was trained on other interactions than dataset '{current['name']}' holds "
                           "now (another digest): resume on the data it started on, or start a new run")
