"""Item tokenizer: RQ-VAE semantic codes, their code table, item embeddings and pretraining."""
from recbole_etegrec.tokenizer.code_table import CodeTable, build_code_table
from recbole_etegrec.tokenizer.embeddings import encode_texts, load_item_embeddings
from recbole_etegrec.tokenizer.pretrain import (
    TokenizerBundle,
    apply_norm,
    fit_norm,
    load_or_pretrain,
    load_tokenizer,
    pretrain_rqvae,
    save_tokenizer,
    tokenizer_cache_path,
)
from recbole_etegrec.tokenizer.rqvae import RQVAE, QuantizerOutput, ResidualQuantizer, RQVAEOutput

__all__ = [
    "CodeTable", "build_code_table", "load_item_embeddings", "encode_texts", "TokenizerBundle", "apply_norm",
    "fit_norm", "load_or_pretrain", "load_tokenizer", "pretrain_rqvae", "save_tokenizer",
    "tokenizer_cache_path", "RQVAE", "QuantizerOutput", "ResidualQuantizer", "RQVAEOutput",
]
