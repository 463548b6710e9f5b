"""Training and validation throughput of the code models, side by side in one run.

    python benchmarks/train_speed.py --dataset Instruments [--key=value ...] [--max_batches N]
    python benchmarks/train_speed.py --dataset ml-100k --config_files tiny.yaml --max_batches 2 --out x.md

One process, one split, one set of starting weights (restored before every timed epoch), the
model sizes of the committed benchmark (``properties/benchmark/<dataset>.yaml``):
  - ETEGRec, one recommender epoch (SIA/PSA on) in ``train_mode: prefix`` without length grouping
    (RecBole's prefix samples, as before whole-sequence training) and in ``sequence`` mode with it;
  - the bare LLaMA backbone's forward + backward on exactly the sequence-mode batches (same
    shapes and masks, random inputs): the floor an epoch could reach;
  - TIGER, one epoch with and without length grouping;
  - one ETEGRec validation pass (beam search + RecBole's evaluator) with and without grouping.
Reports real and padded code positions, seconds, real positions per second, and prints one
Markdown table that is also written to ``benchmarks/train_speed.md`` (``--out``) with the command
and commit. Every figure is measured in this run; ``--max_batches`` (a quick check of the script)
stops each pass early and is noted in the table. Run it on an otherwise idle machine.

Each timed training pass is exactly one epoch (``run_one_epoch``): the trainer's own epoch
(``_train_epoch``) after the set-up ``fit`` does before its first epoch, never ``fit`` itself,
whose stage logic (ETEGRec's alternation and finetune stages) decides how many epochs run. A pass
that fed another number of batches than its loader holds (or ``--max_batches``) stops the script.
``tests/test_benchmark_scripts.py`` runs it on a tiny ml-100k split and checks the printed figures.
"""
import argparse
import copy
import functools
import os
import subprocess
import sys
import time

import torch
from recbole.data.utils import create_samplers
from recbole.utils import init_seed

from recbole_etegrec.benchmark import load_budget
from recbole_etegrec.config import Config
from recbole_etegrec.data import create_dataset
from recbole_etegrec.data.dataloader import CodeSeqFullSortEvalDataLoader, CodeSeqTrainDataLoader, CodeTableSlot
from recbole_etegrec.registry import get_model, get_trainer
from recbole_etegrec.stages.item_tokenizer import prepare_item_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


class Recorded:
    """A training loader that keeps every batch's attention mask (the positions the epoch really fed)
    and stops after ``n`` batches (None: the whole epoch); forwards everything else."""

    def __init__(self, loader, n):
        self.loader, self.n, self.masks = loader, n, []

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if self.n is not None and i >= self.n:
                return
            self.masks.append(batch["code_attention"])
            yield batch

    def positions(self):
        """(real, padded, batches) of the recorded epoch."""
        return sum(int(m.sum()) for m in self.masks), sum(m.numel() for m in self.masks), len(self.masks)

    def __len__(self):
        return len(self.loader) if self.n is None else min(self.n, len(self.loader))

    def __getattr__(self, name):
        return getattr(self.loader, name)


def count_positions(loader, codes):
    """Real and padded code positions of one pass of an evaluation loader (no model)."""
    loader.set_code_table(codes)
    real = padded = 0
    for batch, *_ in loader:
        real, padded = real + int(batch["code_attention"].sum()), padded + batch["code_attention"].numel()
    return real, padded


def train_loader(config, split, sampler, mode, grouped, batch_size=None):
    """A fresh training loader (its own code-table slot) in ``mode``, length-grouped or not."""
    config["group_by_length"] = grouped
    default = config["train_batch_size"]
    config["train_batch_size"] = batch_size or default
    try:
        return CodeSeqTrainDataLoader(config, split, sampler, shuffle=True, slot=CodeTableSlot(), train_mode=mode)
    finally:
        config["train_batch_size"] = default


def run_one_epoch(trainer, loader, epoch, what="timed"):
    """Seconds of exactly one training epoch, index ``epoch``, through the trainer's ``run_epoch``
    (the state and per-step LR schedules ``fit`` sets up in a run that reached that epoch, then
    ``_train_epoch`` alone: no stage logic, no validation); the schedules' horizon counts whole
    epochs of the full loader, as in a run."""
    start = time.perf_counter()
    trainer.run_epoch(loader, epoch, steps_per_epoch=len(loader.loader))
    seconds = time.perf_counter() - start
    fed, expected = loader.positions()[2], len(loader)
    print(f"{what} epoch {epoch}: {fed} batches fed, loader length {len(loader.loader)}, "
          f"max_batches {loader.n}, {seconds:.4f} s", flush=True)
    if fed != expected:
        raise SystemExit(f"error: the timed pass fed {fed} batches, not the {expected} of one epoch")
    return seconds


def timed_pass(model, start_state, new_trainer, new_loader, epoch, limit, warmup):
    """(seconds, Recorded loader) of one timed epoch from ``start_state``. First ``warmup`` untimed
    batches of the same pass (its own trainer and loader, weights restored after): the first steps
    of a process or of new shapes pay one-time costs (allocator, kernel set-up; seconds on CPU)
    that would otherwise land on whichever pass runs first."""
    if warmup:
        model.load_state_dict(start_state)
        run_one_epoch(new_trainer(), Recorded(new_loader(), warmup), epoch, what="warm-up")
    model.load_state_dict(start_state)
    loader = Recorded(new_loader(), limit)
    return run_one_epoch(new_trainer(), loader, epoch), loader


def bare_backbone(model, masks):
    """Forward + backward of the backbone alone on the given attention masks (random inputs)."""
    backbone, hidden = model.backbone, model.backbone.config.hidden_size
    backbone.train()
    start = time.perf_counter()
    for mask in masks:
        embeds = torch.randn(*mask.shape, hidden, requires_grad=True)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids).last_hidden_state
        out.float().pow(2).mean().backward()
    seconds = time.perf_counter() - start
    backbone.zero_grad(set_to_none=True)
    return seconds


def provenance():
    try:
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def secs(seconds):
    """Seconds with 4 significant figures or more (a ratio of two printed times stays checkable)."""
    return f"{seconds:.1f}" if seconds >= 100 else f"{seconds:.2f}" if seconds >= 10 else f"{seconds:.3f}"


def row(name, seconds, real, padded, batches, note=""):
    return (f"| {name} | {batches} | {real:,} | {padded:,} | {padded / max(real, 1):.2f} | {secs(seconds)} | "
            f"{real / seconds:,.0f} | {note} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--config_files", default="", help="comma-separated property files (under the overrides)")
    parser.add_argument("--max_batches", type=int, default=None, help="stop every pass early (script check)")
    parser.add_argument("--warmup_batches", type=int, default=2,
                        help="untimed batches of each pass (and validation batches) before it is timed; 0: none")
    parser.add_argument("--skip_tiger", action="store_true")
    parser.add_argument("--prefix_batch_size", type=int, default=256,
                        help="prefix-mode batch size (256: what prefix mode was benchmarked with)")
    parser.add_argument("--out", default=os.path.join(HERE, "train_speed.md"))
    args, rest = parser.parse_known_args(argv)
    limit = args.max_batches
    commit = provenance()  # the code that runs, before anything can be committed meanwhile
    tcmalloc = "tcmalloc" in os.environ.get("LD_PRELOAD", "")

    files = [f for f in args.config_files.split(",") if f]
    config = Config(model="ETEGRec", dataset=args.dataset, config_file_list=files,
                    config_dict=budget_for("ETEGRec", args.dataset), cmd_args=rest + ["--show_progress=False"])
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    built = dataset.build()
    samplers = create_samplers(config, dataset, built)
    prepare_item_tokenizer(config, built[0])
    model = get_model("ETEGRec")(config, built[0]).to(config["device"])
    start_state = copy.deepcopy(model.state_dict())
    codes = model.code_table.codes
    # an alternation recommender epoch with SIA/PSA on (epochs counts the alternation stage only)
    epoch = next((e for e in range(config["epochs"]) if e >= config["warm_epoch"] and e % config["cycle"]), None)
    if epoch is None:
        raise SystemExit(f"error: no recommender epoch with SIA/PSA among epochs={config['epochs']} "
                         f"(warm_epoch={config['warm_epoch']}, cycle={config['cycle']}): raise --epochs")
    lines = []
    print(f"{args.dataset}: {torch.get_num_threads()} threads; ETEGRec recommender epoch (index {epoch})", flush=True)

    results = {}
    runs = {"prefix": (f"ETEGRec prefix, ungrouped, batch {args.prefix_batch_size}", False, args.prefix_batch_size),
            "sequence": (f"ETEGRec sequence, grouped, batch {config['train_batch_size']}", True, None)}
    for mode, (name, grouped, batch_size) in runs.items():
        seconds, loader = timed_pass(
            model, start_state, lambda: get_trainer(config["MODEL_TYPE"], "ETEGRec")(config, model),
            functools.partial(train_loader, config, built[0], samplers[0], mode, grouped, batch_size),
            epoch, limit, args.warmup_batches)
        real, padded, batches = loader.positions()
        results[mode] = (seconds, real, padded, batches, loader.masks)
        print(row(name, seconds, real, padded, batches), flush=True)
    seconds, real, padded, batches, masks = results["sequence"]
    bare = bare_backbone(model, masks)
    ratio_bare = seconds / bare
    speedup = results["prefix"][0] / seconds
    lines += [row(runs["prefix"][0], *results["prefix"][:4]),
              row(runs["sequence"][0], *results["sequence"][:4],
                  note=f"{speedup:.2f}x faster than prefix; {ratio_bare:.2f}x the bare backbone"),
              row("bare backbone fwd+bwd, sequence batches", bare, real, padded, batches)]
    print(lines[-1], flush=True)

    if not args.skip_tiger:
        tiger_config = Config(model="TIGER", dataset=args.dataset, config_file_list=files,
                              config_dict=budget_for("TIGER", args.dataset), cmd_args=_tiger_args(rest))
        init_seed(tiger_config["seed"], tiger_config["reproducibility"])
        prepare_item_tokenizer(tiger_config, built[0])
        tiger = get_model("TIGER")(tiger_config, built[0]).to(tiger_config["device"])
        tiger_start = copy.deepcopy(tiger.state_dict())
        tiger_times = {}
        for grouped in (False, True):
            seconds, loader = timed_pass(
                tiger, tiger_start, lambda: get_trainer(tiger_config["MODEL_TYPE"], "TIGER")(tiger_config, tiger),
                functools.partial(train_loader, tiger_config, built[0], samplers[0], "prefix", grouped),
                0, limit, args.warmup_batches)
            real, padded, batches = loader.positions()
            tiger_times[grouped] = seconds
            note = f"{tiger_times[False] / seconds:.2f}x faster than ungrouped" if grouped else ""
            lines.append(row(f"TIGER, {'grouped' if grouped else 'ungrouped'}", seconds, real, padded, batches, note))
            print(lines[-1], flush=True)

    model.load_state_dict(start_state)
    model.eval()
    eval_rows, eval_times = [], {}
    if args.warmup_batches:  # untimed: the first beam searches of the process pay one-time costs
        config["group_by_length"] = False
        split = built[1].copy(built[1].inter_feat[:args.warmup_batches * config["eval_batch_size"]])
        valid = CodeSeqFullSortEvalDataLoader(config, split, samplers[1], shuffle=False, slot=CodeTableSlot())
        get_trainer(config["MODEL_TYPE"], "ETEGRec")(config, model).evaluate(valid, load_best_model=False)
    for grouped in (False, True):
        config["group_by_length"] = grouped
        split = built[1] if limit is None else built[1].copy(built[1].inter_feat[:limit * config["eval_batch_size"]])
        valid = CodeSeqFullSortEvalDataLoader(config, split, samplers[1], shuffle=False, slot=CodeTableSlot())
        real, padded = count_positions(valid, codes)
        trainer = get_trainer(config["MODEL_TYPE"], "ETEGRec")(config, model)
        start = time.perf_counter()
        result = trainer.evaluate(valid, load_best_model=False)  # RecBole needs the loader itself
        seconds = time.perf_counter() - start
        eval_times[grouped] = seconds
        users = len(split)
        note = f"{eval_times[False] / seconds:.2f}x faster than ungrouped" if grouped else ""
        eval_rows.append(f"| ETEGRec validation, {'grouped' if grouped else 'ungrouped'} | {users:,} | "
                         f"{padded / max(real, 1):.2f} | {secs(seconds)} | {users / seconds:.0f} | "
                         f"{result['ndcg@10']:.4f} | {note} |")
        print(eval_rows[-1], flush=True)

    header = [
        f"# Training and validation speed, {args.dataset}",
        "",
        f"`{' '.join(['python benchmarks/train_speed.py', *(sys.argv[1:] if argv is None else argv)])}`",
        f"commit {commit}, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"tcmalloc {'preloaded' if tcmalloc else 'not preloaded'}, "
        f"{torch.get_num_threads()} torch threads; models as in "
        + (f"properties/benchmark/{args.dataset}.yaml" if load_budget(args.dataset) else "the property files")
        + (f"; **every pass stopped after {limit} batches**" if limit else "; whole epochs")
        + f"; {args.warmup_batches} untimed warm-up batches before each pass",
        "",
        "| run | batches | real code positions | padded positions | padded/real | seconds | real positions/s | |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
        "",
        "| validation | users | padded/real | seconds | users/s | valid NDCG@10 | |",
        "|---|---|---|---|---|---|---|",
        *eval_rows,
    ]
    text = "\n".join(header) + "\n"
    print(text)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, args.out)
    return 0


def budget_for(model, dataset):
    """The committed benchmark's settings for ``model`` (properties/benchmark/<dataset>.yaml)."""
    budget = load_budget(dataset)
    return {**budget.get("common", {}), **budget.get(model, {})} or None


def _tiger_args(rest):
    """TIGER gets the command line's generic overrides, but not ETEGRec-only keys."""
    etegrec_only = {"train_mode", "lr_rec", "lr_id", "lr_codebook", "cycle", "warm_epoch", "finetune_epochs",
                    "finetune_lr", "rec_warmup_steps", "id_warmup_steps", "llama_config", "llama_path"}
    return [a for a in rest + ["--show_progress=False"] if a[2:].partition("=")[0] not in etegrec_only]


if __name__ == "__main__":
    sys.exit(main())
