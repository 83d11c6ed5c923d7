"""Han et al. (2015) Table 1 on MNIST, reproduced: secateur vs the paper vs torch.nn.utils.prune.

For each network: train the baseline with secateur's default recipe, run
``secateur prune --method han --max-drop 0.1`` (defaults otherwise), then give
torch.nn.utils.prune's global L1 unstructured pruning the same retraining budget (same rounds,
epochs and learning rate, reaching the same final sparsity, and the same final polish) in the
same process. Rows of models not run are kept from the existing JSON.

    python bench/han_table.py [--models lenet300,lenet5] [--out runs/bench] [--reuse-baselines] [--no-peer]
                              [--short] [--json FILE] [--md FILE]

``--short`` gives a shortened budget (SHORT: fewer baseline epochs, one-epoch rounds, fewer
rounds), for the larger zoo networks on a CPU; the table labels such rows.

Prints a markdown table and writes JSON + markdown (default: bench/results/han_table.*).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur.analysis.metrics import count_params
from secateur.app.pipeline import load_baseline, prune_run
from secateur.io import rundir
from secateur.search.orchestrator import PruneConfig, retrain_config
from secateur.train import TrainConfig, evaluate, fit
from secateur.zoo.baseline import default_config, train_baseline
from secateur.zoo.data import load_dataset

HAN = {  # Han et al. 2015, Table 1: error before -> after, params before -> after, compression
    "lenet300": {"error_before": 1.64, "error_after": 1.59, "params_before": 267_000, "params_after": 22_000,
                 "compression": 12},
    "lenet5": {"error_before": 0.80, "error_after": 0.77, "params_before": 431_000, "params_after": 36_000,
               "compression": 12},
}
RESULTS = Path(__file__).resolve().parent / "results"
SHORT = {"train_epochs": 4, "prune": {"retrain_epochs": 1, "rounds": 8, "polish_epochs": 2}}  # --short


def torch_prune_peer(baseline: nn.Module, data, sparsity: float, rounds: int, retrain: TrainConfig,
                     polish: TrainConfig | None = None) -> dict:
    """Iterative global L1 pruning with torch.nn.utils.prune to ``sparsity`` in ``rounds`` rounds.

    ``polish``: the same final retraining secateur gave its chosen model, for the same budget.
    """
    model = copy.deepcopy(baseline)
    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    start, pruned_before = time.perf_counter(), 0.0
    for r in range(1, rounds + 1):
        goal = 1 - (1 - sparsity) ** (r / rounds)  # geometric ramp to the final sparsity
        amount = (goal - pruned_before) / (1 - pruned_before)  # torch: fraction of what remains
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)
        fit(model, data, retrain.replace(seed=retrain.seed + r), progress=False)
        pruned_before = goal
    if polish is not None:
        fit(model, data, polish, progress=False)
    for module, name in targets:
        torch_prune.remove(module, name)
    return {"test_accuracy": evaluate(model, data, "test"), "val_accuracy": evaluate(model, data, "val"),
            "params_nonzero": count_params(model, nonzero=True), "seconds": time.perf_counter() - start}


def weight_sparsity(results: dict) -> float:
    """Fraction of pruned-layer weights that are zero in secateur's result."""
    total = sum(layer["weights"] for layer in results["layers"])
    return 1 - sum(layer["nonzero"] for layer in results["layers"]) / total


def baseline_for(name: str, data, out: Path, reuse: bool, epochs: int | None = None):
    """The trained baseline and its training seconds (reused from ``out/<name>/baseline`` if asked)."""
    folder = rundir.baseline_dir(out / name)
    if reuse and rundir.has_checkpoint(folder):
        baseline = load_baseline(folder)
        return baseline, float(baseline.meta.get("train_seconds") or 0.0)
    shutil.rmtree(out / name, ignore_errors=True)
    start = time.perf_counter()
    recipe = default_config(name)
    baseline = train_baseline(name, data, out=folder, progress=False,
                              config=recipe.replace(epochs=epochs) if epochs else recipe)
    return baseline, time.perf_counter() - start


def run_model(name: str, data, out: Path, max_drop: float, peer: bool = True, reuse: bool = False,
              budget: dict | None = None) -> dict:
    """Baseline, secateur's run and the peer for one network (``budget``: SHORT or None)."""
    budget = budget or {}
    baseline, train_seconds = baseline_for(name, data, out, reuse, budget.get("train_epochs"))
    shutil.rmtree(out / name / "prune", ignore_errors=True)
    config = PruneConfig(method="han", max_drop=max_drop, **budget.get("prune", {}))
    result = prune_run(out=out / name / "prune", dataset=data.name, from_dir=rundir.baseline_dir(out / name),
                       config=config, progress=True)
    res = result.results
    budget_rounds = len(result.history) + sum(r.get("recovery_passes", 0) for r in result.history)
    recipe = TrainConfig.from_dict(baseline.meta["train"])
    retrain = retrain_config(config, recipe)
    polish = recipe.replace(epochs=res["polish"]["epochs"], seed=recipe.seed + 1) if res.get("polish") else None
    peer = (torch_prune_peer(baseline.model, data, weight_sparsity(res), budget_rounds, retrain, polish)
            if peer else None)
    shutil.copy(out / name / "prune" / rundir.TRADEOFF_PNG, RESULTS / f"{name}_tradeoff.png")
    return {
        "params_before": res["params"]["baseline"], "params_after": res["params"]["nonzero"],
        "compression": res["compression"], "error_before": 100 * (1 - res["baseline"]["test"]["accuracy"]),
        "error_after": 100 * (1 - res["pruned"]["test"]["accuracy"]),
        "val_drop": res["drop"]["val"], "acceptance": res.get("acceptance"), "polish": res.get("polish"),
        "train_seconds": train_seconds, "prune_seconds": res["seconds"], "budget": budget or None,
        "train_epochs": recipe.epochs, "retrain_epochs": config.retrain_epochs, "threads": torch.get_num_threads(),
        "total_seconds": train_seconds + res["seconds"], "rounds": res["rounds"],
        "layers": [{k: layer[k] for k in ("name", "weights", "nonzero", "kept", "macs", "macs_nonzero")}
                   for layer in res["layers"]],
        "torch_prune": None if peer is None else {
            **peer, "error_after": 100 * (1 - peer["test_accuracy"]),
            "compression": res["params"]["baseline"] / max(peer["params_nonzero"], 1),
            "retrain_rounds": budget_rounds, "polish_epochs": polish.epochs if polish else 0},
    }


def markdown(rows: dict) -> str:
    """Table 1 in markdown: Han's published row, secateur's and the peer's for each network."""
    lines = ["| network | source | top-1 error before -> after | params before -> after | compression | wall time |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        han, peer = HAN.get(name), row["torch_prune"]
        if han:
            lines.append(f"| {name} | Han et al. 2015 | {han['error_before']:.2f}% -> {han['error_after']:.2f}% | "
                         f"{han['params_before'] // 1000}K -> {han['params_after'] // 1000}K | "
                         f"{han['compression']}x | - |")
        rule = (f", confidence {row['acceptance']['confidence']:g}" if row.get("acceptance") else ", plain rule") + \
            (f", polish {row['polish']['epochs']} ep" if row.get("polish") else "") + \
            (f"; short budget: {row['train_epochs']}-epoch baseline, {row['retrain_epochs']}-epoch rounds, "
             f"{row['threads']} thread(s)" if row.get("budget") else "")
        lines.append(f"| {name} | **secateur** (han, iterative, max-drop 0.1{rule}) | {row['error_before']:.2f}% -> "
                     f"{row['error_after']:.2f}% | {row['params_before']:,} -> {row['params_after']:,} | "
                     f"**{row['compression']:.1f}x** | {row['total_seconds'] / 60:.1f} min "
                     f"({row['train_seconds'] / 60:.1f} train + {row['prune_seconds'] / 60:.1f} prune) |")
        if peer is None:
            continue
        lines.append(f"| {name} | torch.nn.utils.prune global L1, same budget | {row['error_before']:.2f}% -> "
                     f"{peer['error_after']:.2f}% | {row['params_before']:,} -> {peer['params_nonzero']:,} | "
                     f"{peer['compression']:.1f}x | {peer['seconds'] / 60:.1f} min prune |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--max-drop", type=float, default=0.1)
    parser.add_argument("--no-peer", action="store_true", help="skip torch.nn.utils.prune (saves half the time)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--reuse-baselines", action="store_true",
                        help="reuse OUT/<model>/baseline when present (its recorded training time is reported)")
    parser.add_argument("--short", action="store_true", help=f"shortened budget for big nets on a CPU: {SHORT}")
    parser.add_argument("--json", type=Path, default=RESULTS / "han_table.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "han_table.md")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist")
    previous = json.loads(args.json.read_text()) if args.json.exists() else {}
    rows = previous.get("models", {})
    for name in args.models.split(","):
        rows[name] = run_model(name, data, args.out, args.max_drop, peer=not args.no_peer, reuse=args.reuse_baselines,
                               budget=SHORT if args.short else None)
        report = {"machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}",
                  "max_drop": args.max_drop, "han2015": HAN, "models": rows}
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True))
        args.md.write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
