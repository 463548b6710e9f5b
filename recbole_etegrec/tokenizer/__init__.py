"""Item tokenizer library: the RQ-VAE, its code table, input normalisation, the pretraining loop,
checkpoint I/O and item-text encoding. Imports nothing from the pipeline (config, data, model,
trainer); ``recbole_etegrec.stages`` runs it as a stage before the model is built."""
from recbole_etegrec.tokenizer.checkpoint import TokenizerBundle, load_tokenizer, save_bundle, save_tokenizer
from recbole_etegrec.tokenizer.code_table import CodeTable, build_code_table
from recbole_etegrec.tokenizer.norm import NORM_KINDS, apply_norm, check_finite, fit_norm
from recbole_etegrec.tokenizer.pretrain import code_stats, format_stats, pretrain_rqvae
from recbole_etegrec.tokenizer.rqvae import RQVAE, QuantizerOutput, ResidualQuantizer, RQVAEOutput
from recbole_etegrec.tokenizer.text import encode_texts, read_item_texts

__all__ = [
    "TokenizerBundle", "load_tokenizer", "save_bundle", "save_tokenizer", "CodeTable", "build_code_table",
    "NORM_KINDS", "apply_norm", "check_finite", "fit_norm", "code_stats", "format_stats", "pretrain_rqvae",
    "RQVAE", "QuantizerOutput", "ResidualQuantizer", "RQVAEOutput", "encode_texts", "read_item_texts",
]
