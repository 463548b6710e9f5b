"""The plugin's commands: argument parsing and the ``main`` of each command, imported only by the
``recbole-etegrec`` console script (``recbole_etegrec.cli``), the ``python -m`` shims of the library
modules, ``run_recbole_etegrec.py`` and ``tune/run_tune.py``. No library module imports this package.

    args.py         the argument rules and the one-line error handler shared by every command
    run.py          run: train and evaluate models (python run_recbole_etegrec.py)
    prepare.py      prepare: public dataset -> RecBole atomic files (python -m recbole_etegrec.data.prepare)
    tokenize.py     tokenize: pretrain the item tokenizer (python -m recbole_etegrec.tokenizer.pretrain)
    tune.py         tune: Ray Tune sweep (python tune/run_tune.py, python -m recbole_etegrec.tune)
    recommend.py    recommend: top-k from a checkpoint (python -m recbole_etegrec.recommend)
    export_lora.py  export_lora: LoRA adapters of a checkpoint (python -m recbole_etegrec.export_lora)

Each command is ``main(argv=None, prog=...) -> int`` (0, or 2 with one ``error:`` line); heavy
modules (torch, RecBole, transformers, Ray) are imported inside it, so ``--help`` stays fast.
"""
