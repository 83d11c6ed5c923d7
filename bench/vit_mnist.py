"""Benchmark: the zoo's small vision transformer (``vit-mnist``) pruned structurally within a drop bound.

For each dataset (MNIST, Fashion-MNIST): a baseline trained with the zoo recipe (or reused), then
``secateur.prune(granularity=neuron|channel, max_drop=...)`` (what ``secateur prune --model vit-mnist
--granularity neuron --max-drop 0.3`` runs), and the row: baseline and pruned test error, parameter
and MAC ratios, wall times, and what was pruned (per layer kind: MLP neurons, attention q/k/v/proj
rows, patch embedding). ``neuron`` prunes the MLP's hidden neurons and whole heads (the patch
embedding is a conv, kept whole); ``channel`` also prunes the embedding dimension (the residual
stream, across the LayerNorms), where most of a ViT's MACs are.

    python bench/vit_mnist.py [--datasets mnist,fashion-mnist] [--out runs/bench/vit-mnist] [--reuse]
                              [--max-drop 0.3] [--granularity neuron] [--rounds 6] [--retrain-epochs 1]
                              [--retrain-subset N] [--train-epochs N] [--threads 1]
                              [--start X] [--recovery N] [--distill SHARE] [--polish-epochs N] [--retrain-lr LR]

Writes ``bench/results/vit_mnist.{json,md}`` (``--json`` / ``--md`` to change) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch does anything)
from secateur.app.pipeline import load_baseline
from secateur.io import rundir
from secateur.search.orchestrator import PruneConfig, prune
from secateur.zoo.baseline import default_config, train_baseline
from secateur.zoo.data import Dataset, load_dataset

MODEL = "vit-mnist"
RESULTS = Path(__file__).resolve().parent / "results"
DATA_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}  # Debian's dataset-fashion-mnist
KINDS = [("MLP neurons", r"\.mlp\.fc1$"), ("attention q/k/v", r"\.attn\.(q|k|v)$"),
         ("attention proj", r"\.attn\.proj$"), ("patch embedding", r"^patch_embed$")]


def dataset(name: str) -> Dataset:
    """The dataset by name ($SECATEUR_DATA for MNIST; Debian's files for Fashion-MNIST when present)."""
    folder = DATA_DIRS.get(name)
    return load_dataset(name, folder if folder and Path(folder).is_dir() else None)


def baseline(data: Dataset, folder: Path, reuse: bool, epochs: int | None) -> tuple[torch.nn.Module, dict, float]:
    """The trained baseline (reused from ``folder`` when asked and present), its meta and training seconds."""
    if reuse and rundir.has_checkpoint(folder):
        loaded = load_baseline(folder)
        return loaded.model, loaded.meta, float(loaded.meta.get("train_seconds") or 0.0)
    shutil.rmtree(folder, ignore_errors=True)
    recipe = default_config(MODEL)
    trained = train_baseline(MODEL, data, out=folder, config=recipe.replace(epochs=epochs) if epochs else recipe)
    return trained.model, trained.meta, float(trained.meta["train_seconds"])


def pruned_by_kind(channels: dict[str, dict]) -> dict[str, dict[str, int]]:
    """Channels before / after summed per layer kind (MLP neurons, attention rows, embedding)."""
    kinds: dict[str, dict[str, int]] = {}
    for layer, c in channels.items():
        kind = next((k for k, pattern in KINDS if re.search(pattern, layer)), None)
        if kind is not None:
            total = kinds.setdefault(kind, {"before": 0, "after": 0})
            total["before"] += c["before"]
            total["after"] += c["after"]
    return kinds


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    """Baseline, prune within the bound, and the row for one dataset."""
    data = dataset(name)
    if args.subset:  # a smoke run: the first N training images, N/4 for validation and test
        data = data.subset(train=args.subset, val=args.subset // 4, test=args.subset // 4)
    out = args.out / name
    start = time.perf_counter()
    model, meta, train_seconds = baseline(data, rundir.baseline_dir(out), args.reuse, args.train_epochs)
    config = PruneConfig(granularity=args.granularity, max_drop=args.max_drop, rounds=args.rounds,
                         retrain_epochs=args.retrain_epochs, polish_epochs=args.polish_epochs,
                         retrain_lr=args.retrain_lr, start=args.start, recovery=args.recovery,
                         distill=args.distill, certify=args.certify)
    retrain_data = data.subset(train=args.retrain_subset) if args.retrain_subset else data
    shutil.rmtree(out / "prune", ignore_errors=True)
    prune_start = time.perf_counter()
    result = prune(model, data=retrain_data, config=config, train_config=default_config(MODEL),
                   out=out / "prune", meta={"model": meta["model"], "dataset": data.name})
    res = result.results
    return {
        "dataset": name, "error_before": 100 * (1 - res["baseline"]["test"]["accuracy"]),
        "error_after": 100 * (1 - res["pruned"]["test"]["accuracy"]), "val_drop": res["drop"]["val"],
        "drops": res["drop"],
        "params_before": res["params"]["baseline"], "params_after": res["params"]["total"],
        "param_ratio": res["params"]["baseline"] / res["params"]["total"],
        "macs_before": res["macs"]["baseline"], "macs_after": res["macs"]["dense"],
        "mac_ratio": res["macs"]["baseline"] / res["macs"]["dense"],
        "pruned": pruned_by_kind(res.get("channels", {})), "rounds": res["rounds"],
        "train_seconds": train_seconds, "prune_seconds": time.perf_counter() - prune_start,
        "wall_seconds": time.perf_counter() - start, "train_epochs": meta["train"]["epochs"],
        "budget": {"granularity": args.granularity, "max_drop": args.max_drop, "rounds": args.rounds,
                   "retrain_epochs": args.retrain_epochs, "retrain_subset": args.retrain_subset,
                   "polish_epochs": args.polish_epochs, "retrain_lr": args.retrain_lr, "start": args.start,
                   "recovery": args.recovery, "distill": args.distill, "certify": args.certify},
    }


def _what(row: dict) -> str:
    return ", ".join(f"{kind} {c['before']} -> {c['after']}" for kind, c in row["pruned"].items()
                     if c["after"] < c["before"]) or "nothing"


def markdown(rows: list[dict], argv: list[str]) -> str:
    commands = list(dict.fromkeys(" ".join(r.get("command", argv)) for r in rows))
    lines = ["# vit-mnist pruned structurally within the drop bound\n",
             *(f"- command: `python bench/vit_mnist.py {c}`" for c in commands),
             f"- torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{torch.get_num_threads()} thread(s); a shared, loaded machine: wall times are upper bounds", "",
             "| dataset | test error before -> after | val drop | test drop | params | param ratio | MACs | "
             "MAC ratio | pruned | wall (train + prune) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['error_before']:.2f}% -> {r['error_after']:.2f}% | {r['val_drop']:.2f} | "
            f"{r['error_after'] - r['error_before']:.2f} | "
            f"{r['params_before'] / 1e3:.1f}K -> {r['params_after'] / 1e3:.1f}K | {r['param_ratio']:.2f}x | "
            f"{r['macs_before'] / 1e6:.2f}M -> {r['macs_after'] / 1e6:.2f}M | {r['mac_ratio']:.2f}x | {_what(r)} | "
            f"{r['train_seconds'] / 60:.1f} + {r['prune_seconds'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--datasets", default="mnist,fashion-mnist")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/vit-mnist"), help="run folders go here")
    parser.add_argument("--reuse", action="store_true", help="reuse a baseline already trained in --out")
    parser.add_argument("--train-epochs", type=int, help="baseline epochs (default: the zoo recipe's)")
    parser.add_argument("--granularity", default="neuron", choices=("neuron", "channel"))
    parser.add_argument("--max-drop", type=float, default=0.3, help="percentage points of validation accuracy")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--retrain-epochs", type=int, default=1)
    parser.add_argument("--retrain-subset", type=int, help="retrain on the first N training images (faster)")
    parser.add_argument("--polish-epochs", type=int, default=1)
    parser.add_argument("--retrain-lr", type=float, help="retraining learning rate (default: half the recipe's)")
    parser.add_argument("--start", type=float, help="first strength (default: the granularity's, 1.0: half of "
                        "every group's channels)")
    parser.add_argument("--recovery", type=int, default=1, help="extra retraining passes of a round over the bound")
    parser.add_argument("--certify", type=float, default=0.0, help="share of the validation split held out to "
                        "certify the final model (secateur's certify; 0: off)")
    parser.add_argument("--distill", type=float, default=0.0, help="share of the dense model's soft targets "
                        "in the retraining loss")
    parser.add_argument("--subset", type=int, help="smoke run on N training images (N/4 val and test)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=RESULTS / "vit_mnist.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "vit_mnist.md")
    return parser.parse_args(argv)


def earlier_rows(path: Path) -> list[dict]:
    """Rows an earlier run wrote into ``path`` (none when there is no such file)."""
    return list(json.loads(path.read_text())["rows"]) if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    rows = [r for r in earlier_rows(args.json) if r["dataset"] not in names]  # other datasets' rows are kept
    for name in names:
        rows.append({**run_dataset(name, args), "command": sys.argv[1:]})
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": sys.argv[1:], "rows": rows}, indent=1))
        args.md.write_text(markdown(rows, sys.argv[1:]))
        print(f"{name}: done in {rows[-1]['wall_seconds'] / 60:.1f} min", file=sys.stderr, flush=True)
    print(markdown(rows, sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
