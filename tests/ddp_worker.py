"""Run under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo) by test_ddp.py.

Trains a tiny ETEGRec through the plugin pipeline (a tokenizer epoch, then a recommender epoch),
then checks that both codebook copies (recommender and tokenizer) are identical on every rank,
and prints the test metrics RecBole gathered over both ranks' users.
"""
import json
import sys

import torch
import torch.distributed as dist

from recbole_etegrec.config import Config
from recbole_etegrec.quick_start import load_data
from recbole_etegrec.registry import get_model, get_trainer


def main(config_dict):
    config = Config(model="ETEGRec", dataset="ml-100k", config_dict=config_dict)
    assert not config["single_spec"] and config["world_size"] == 2, "not running distributed"
    _, train, valid, test = load_data(config)  # split + the item tokenizer stage
    model = get_model("ETEGRec")(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], "ETEGRec")(config, model)
    trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True)
    books = torch.cat([p.detach().flatten() for p in [*model.codebooks.parameters(),
                                                      *model.tokenizer.quantizer.parameters()]])
    gathered = [torch.zeros_like(books) for _ in range(2)]
    dist.all_gather(gathered, books)
    same = all(torch.equal(g, gathered[0]) for g in gathered)
    if dist.get_rank() == 0:
        print("DDP_RESULT " + json.dumps({"ranks_equal": same, "test": dict(result)}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
