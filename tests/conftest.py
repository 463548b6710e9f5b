"""Shared tiny fixtures: a small ml-100k sample and random item embeddings (no SASRec training)."""
import numpy as np
import pytest

from recbole_etegrec.config import Config
from recbole_etegrec.data import create_dataset, data_preparation
from recbole_etegrec.stages.item_tokenizer import prepare_item_tokenizer

ML100K_ITEMS = 1683  # RecBole's item vocabulary for ml-100k, padding included

TINY_TOKENIZER = {
    "item_emb_source": "file", "e_dim": 8, "rqvae_hidden": [16], "code_num": 16,
    "rqvae_epochs": 3, "rqvae_warmup_epochs": 1, "rqvae_batch_size": 512, "rqvae_kmeans_init": True,
}
TINY_LLAMA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="session")
def item_emb_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("emb") / "ml100k_random.npy"
    emb = np.random.default_rng(0).normal(size=(ML100K_ITEMS, 16)).astype(np.float32)
    emb[0] = 0
    np.save(path, emb)
    return str(path)


@pytest.fixture(scope="session")
def tiny_config_dict(item_emb_file, tmp_path_factory):
    """Config overrides every code-model test starts from."""
    return {
        **TINY_TOKENIZER, "item_emb_file": item_emb_file, "llama_config": TINY_LLAMA,
        "checkpoint_dir": str(tmp_path_factory.mktemp("saved")), "debug": True, "debug_samples": 40,
        "show_progress": False, "train_batch_size": 64, "eval_batch_size": 64, "epochs": 2,
        "num_beams": 10, "generate_chunk_size": 16, "state": "WARNING",
    }


def build(model, config_dict):
    """Config, then RecBole's split, then (code models) the item tokenizer stage, as the pipeline does."""
    config = Config(model=model, dataset="ml-100k", config_dict=config_dict)
    dataset = create_dataset(config)
    splits = data_preparation(config, dataset)
    if getattr(config.model_class, "uses_item_codes", False):
        prepare_item_tokenizer(config, splits[0]._dataset)
    return config, splits
