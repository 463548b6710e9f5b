"""The ``tokenize`` command: retrain the item tokenizer of a dataset and write its cache
(``recbole_etegrec.stages.item_tokenizer``); the last line printed is the tokenizer statistics
``collision_rate=<float> utilization=<l0>,<l1>,<l2> max_suffix=<int> explained_variance=<float>
kept_epoch=<int>``.

    recbole-etegrec tokenize --dataset Instruments   # == python -m recbole_etegrec.tokenizer.pretrain
"""
import os
from typing import TYPE_CHECKING, Optional, Sequence

from recbole_etegrec.commands.args import ArgumentParser, handle, parse_args

if TYPE_CHECKING:
    from recbole_etegrec.config import Config

PROG = "recbole-etegrec tokenize"


def build_config(model, dataset, config_files, cmd_args) -> "Config":
    """The model's Config; a model without item codes (SASRec, ...) gets the tokenizer defaults layered in."""
    from recbole_etegrec.config import Config
    from recbole_etegrec.registry import properties_dir

    config = Config(model=model, dataset=dataset, config_file_list=config_files, cmd_args=cmd_args)
    if config["code_num"] is None:
        files = [os.path.join(properties_dir(), "tokenizer.yaml"), *config_files]
        config = Config(model=model, dataset=dataset, config_file_list=files, cmd_args=cmd_args)
    return config


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """0, or 2 with one error line."""
    parser = ArgumentParser(
        prog=prog,
        description="Pretrain the RQ-VAE item tokenizer and write it to the tokenizer cache.",
        epilog="Any other --key=value (or --key value) overrides a config key, e.g. --item_emb_source=text "
               "--rqvae_epochs 300.",
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="ETEGRec", help="model whose config is used (default ETEGRec)")
    parser.add_argument("--config_files", default="", help="comma-separated YAML files")

    def command() -> int:
        args, rest = parse_args(parser, argv)
        from logging import getLogger

        from recbole.utils import init_logger, init_seed

        from recbole_etegrec.data import create_dataset, data_preparation
        from recbole_etegrec.stages.item_tokenizer import embed_and_pretrain, tokenizer_cache_path
        from recbole_etegrec.tokenizer import format_stats, save_bundle

        files = [f for f in args.config_files.split(",") if f]
        config = build_config(args.model, args.dataset, files, rest)
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        logger = getLogger()
        train_data, _, _ = data_preparation(config, create_dataset(config))
        path = tokenizer_cache_path(config)
        bundle = embed_and_pretrain(config, train_data._dataset, logger)
        save_bundle(path, bundle)
        stats = bundle.stats
        logger.info(f"tokenizer saved to {path}")
        logger.info(f"embedding seconds {stats['emb_seconds']:.1f}, RQ-VAE seconds {stats['seconds']:.1f}, "
                    f"perplexity {','.join(f'{p:.1f}' for p in stats['perplexity'])}")
        print(format_stats(stats))
        return 0

    return handle(command)
