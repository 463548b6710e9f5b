"""The ``prepare`` command: a public dataset -> RecBole atomic files (``recbole_etegrec.data.prepare``).

    python -m recbole_etegrec.data.prepare ../shared/data/Instruments --name Instruments
    recbole-etegrec prepare raw/amazon2018 --name Instruments --kcore 5
"""
from typing import Optional, Sequence

from recbole_etegrec.commands.args import ArgumentParser, handle, parse_args

PROG = "python -m recbole_etegrec.data.prepare"


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """0, or 2 with one error line."""
    parser = ArgumentParser(prog=prog, description="Turn a public recommendation dataset into RecBole atomic "
                                                   "files OUT/NAME/NAME.inter (+ .item).")
    parser.add_argument("source", help="folder (or file) with LC-Rec JSON or raw Amazon 2018 files")
    parser.add_argument("--name", required=True, help="dataset name, e.g. Instruments")
    parser.add_argument("--out", default="dataset", help="RecBole data_path folder (default dataset)")
    parser.add_argument("--kcore", type=int, default=5, help="k-core for raw Amazon (default 5)")

    def command() -> int:
        args, _ = parse_args(parser, argv, overrides=False)
        from recbole_etegrec.data.prepare import prepare

        stats = prepare(args.source, args.name, args.out, args.kcore)
        print(f"{args.name}: {stats['users']:,} users, {stats['items']:,} items, "
              f"{stats['interactions']:,} interactions")
        print(f"  wrote {stats['inter_path']}")
        print(f"  wrote {stats['item_path']}" if stats["item_path"] else
              "  no item text in the source: no .item file written")
        print(f"  wrote {stats['config_path']} (item_emb_source: {stats['item_emb_source']}; "
              "evaluation protocol: properties/protocol.yaml)")
        return 0

    return handle(command)
