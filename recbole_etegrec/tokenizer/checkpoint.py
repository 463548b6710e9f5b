"""The tokenizer bundle (RQ-VAE + code table + input normalisation) and its checkpoint file."""
import os
from typing import NamedTuple, Optional

import torch

from recbole_etegrec.errors import EtegrecError
from recbole_etegrec.io import atomic_torch_save, remove_stale_tmp
from recbole_etegrec.rng import rng_scope
from recbole_etegrec.tokenizer.code_table import CodeTable
from recbole_etegrec.tokenizer.norm import apply_norm
from recbole_etegrec.tokenizer.rqvae import RQVAE

_FORMAT = 1


class TokenizerBundle(NamedTuple):
    rqvae: RQVAE
    code_table: CodeTable
    embeddings_norm: Optional[dict]  # how raw item embeddings are normalised before the RQ-VAE
    stats: dict
    item_emb: Optional[torch.Tensor]  # [item_num, d] normalised embeddings the RQ-VAE was trained on

    def normalize(self, emb: torch.Tensor) -> torch.Tensor:
        """Apply this tokenizer's input normalisation to raw item embeddings [N, d]."""
        return apply_norm(emb, self.embeddings_norm)


def save_tokenizer(path: str, rqvae: RQVAE, code_table: CodeTable, stats: dict, norm: Optional[dict],
                   item_emb: Optional[torch.Tensor] = None, tokens=None) -> None:
    """Atomic write of everything needed to rebuild the tokenizer without its config."""
    state = {
        "format": _FORMAT, "arch": rqvae.arch, "state_dict": rqvae.state_dict(),
        "code_table": code_table.state_dict(), "stats": stats, "norm": norm,
        "item_emb": item_emb, "item_tokens": list(tokens) if tokens is not None else None,
    }
    remove_stale_tmp(os.path.dirname(os.path.abspath(path)))
    atomic_torch_save(state, path)


def save_bundle(path: str, bundle: TokenizerBundle) -> None:
    stats = {k: v for k, v in bundle.stats.items() if k != "item_tokens"}
    save_tokenizer(path, bundle.rqvae, bundle.code_table, stats, bundle.embeddings_norm, bundle.item_emb,
                   bundle.stats.get("item_tokens"))


def load_tokenizer(path: str) -> TokenizerBundle:
    """TokenizerBundle from a file written by ``save_tokenizer`` (tensors and plain types only)."""
    if not os.path.isfile(path):
        raise EtegrecError(f"tokenizer checkpoint '{path}' does not exist: fix tokenizer_path or unset it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user problem
        raise EtegrecError(f"tokenizer checkpoint '{path}' cannot be read ({type(err).__name__}): "
                           "regenerate it with `recbole-etegrec tokenize`") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise EtegrecError(f"'{path}' is not a tokenizer checkpoint of this version: regenerate it with "
                           "`recbole-etegrec tokenize`")
    with rng_scope():  # the module's random init must not shift the training run's stream
        rqvae = RQVAE(**state["arch"])
    rqvae.load_state_dict(state["state_dict"])
    rqvae.eval()
    stats = dict(state["stats"], item_tokens=state["item_tokens"])
    return TokenizerBundle(rqvae, CodeTable.from_state_dict(state["code_table"]), state["norm"], stats,
                           state["item_emb"])
