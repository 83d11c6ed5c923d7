"""A search that wastes less: the drop-bound search without and with the final smooth ramp,
beside torch.nn.utils.prune, in one run.

For each network: train a baseline (secateur's recipe, possibly shortened), then

- **before**: ``secateur.prune(method="han", max_drop=...)`` as today (rounds, roll-backs, polish);
- **after**: the same run with ``ramp_epochs=E`` (same seed, so the same search; then one gradual
  ramp from the dense model to the chosen strength at the baseline's learning rate, kept only
  if within the search's rule and no worse on validation accuracy and nonzero weights);
- **torch.nn.utils.prune**: iterative global L1 to the *after* run's final weight sparsity, with
  the same retraining budget (as many rounds as the after run retrained, same epochs and rate,
  then the polish's and the ramp's epochs at the baseline's rate).

Reports rounds, rolled-back rounds, compression, val/test error and wall time.

    python bench/search_waste.py [--models lenet300,lenet5] [--max-drop 0.1] [--full] [--json F] [--md F]

Without ``--full`` the budget is shortened (BUDGETS: a training subset for LeNet-5, fewer and
shorter rounds, shorter baselines); the table labels it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import secateur  # first: sets OMP_WAIT_POLICY before torch loads
from secateur.app.pipeline import load_baseline
from secateur.search.orchestrator import PruneConfig, retrain_config
from secateur.unstructured.masks import effective_state_dict
from secateur.zoo.baseline import default_config, train_baseline
from secateur.zoo.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from han_table import torch_prune_peer, weight_sparsity  # the peer of the Han table

RESULTS = Path(__file__).resolve().parent / "results"
BUDGETS = {  # shortened budgets for the 2-core CPU (None: the full recipe and search defaults)
    "lenet300": {"train": None, "baseline_epochs": 10,
                 "prune": {"rounds": 10, "retrain_epochs": 2, "polish_epochs": 10}, "ramp_epochs": 10},
    "lenet5": {"train": 5_000, "val": 2_000, "baseline_epochs": 4,
               "prune": {"rounds": 5, "retrain_epochs": 1, "polish_epochs": 2}, "ramp_epochs": 2},
}
SMOKE = {"train": 1_000, "baseline_epochs": 1, "prune": {"rounds": 2, "retrain_epochs": 1, "polish_epochs": 1},
         "ramp_epochs": 1}  # --smoke: a check that the script runs, in a minute


def secateur_row(baseline: torch.nn.Module, data, recipe, options: dict) -> dict:
    """One secateur.prune run and its numbers."""
    start = time.perf_counter()
    result = secateur.prune(baseline, data=data, train_config=recipe, method="han", **options)
    res, history = result.results, result.history
    return {
        "rounds": len(history), "rolled_back": sum(not row["feasible"] for row in history),
        "recovery_passes": sum(row.get("recovery_passes", 0) for row in history),
        "compression": res["compression"], "params_nonzero": res["params"]["nonzero"],
        "val_error": 100 * (1 - res["pruned"]["val"]["accuracy"]),
        "test_error": 100 * (1 - res["pruned"]["test"]["accuracy"]),
        "baseline_val_error": 100 * (1 - res["baseline"]["val"]["accuracy"]),
        "baseline_test_error": 100 * (1 - res["baseline"]["test"]["accuracy"]),
        "sparsity": weight_sparsity(res), "polish": res.get("polish"), "ramp": res.get("ramp"),
        "seconds": time.perf_counter() - start,
        "strengths": [round(row["strength"], 3) for row in history],
    }


def run_model(name: str, max_drop: float, full: bool, smoke: bool = False, baseline_dir: Path | None = None) -> dict:
    """Baseline, before, after and the torch.nn.utils.prune peer for one network."""
    budget = SMOKE if smoke else None if full else BUDGETS[name]
    data = load_dataset("mnist")
    if budget and (budget["train"] or budget.get("val")):
        data = data.subset(train=budget["train"], val=budget.get("val"))
    recipe = default_config(name)
    if budget:
        recipe = recipe.replace(epochs=budget["baseline_epochs"])
    start = time.perf_counter()
    if baseline_dir is not None:  # a baseline trained before (e.g. on the full training set)
        baseline = secateur.build_model(name)  # plain modules, as torch.nn.utils.prune needs
        baseline.load_state_dict(effective_state_dict(load_baseline(baseline_dir).model))
    else:
        baseline = train_baseline(name, data, config=recipe, progress=False).model
    train_seconds = time.perf_counter() - start
    prune_options = {"max_drop": max_drop, **(budget["prune"] if budget else {})}
    ramp_epochs = budget["ramp_epochs"] if budget else recipe.epochs
    before = secateur_row(baseline, data, recipe, prune_options)
    after = secateur_row(baseline, data, recipe, {**prune_options, "ramp_epochs": ramp_epochs})
    config = PruneConfig(method="han", **prune_options)
    retrain = retrain_config(config, recipe)
    budget_rounds = after["rounds"] + after["recovery_passes"]
    final_epochs = (after["polish"] or {}).get("epochs", 0) + ramp_epochs
    peer = torch_prune_peer(baseline, data, after["sparsity"], budget_rounds, retrain,
                            recipe.replace(epochs=final_epochs, seed=recipe.seed + 1))
    peer.update(val_error=100 * (1 - peer["val_accuracy"]), test_error=100 * (1 - peer["test_accuracy"]),
                compression=after["params_nonzero"] * after["compression"] / max(peer["params_nonzero"], 1),
                retrain_rounds=budget_rounds, final_epochs=final_epochs)
    return {"model": name, "budget": budget, "max_drop": max_drop, "train_seconds": train_seconds,
            "baseline_dir": None if baseline_dir is None else str(baseline_dir),
            "baseline_epochs": recipe.epochs, "train_size": len(data.train), "before": before, "after": after,
            "torch_prune": peer}


def _baseline_label(row: dict) -> str:
    if row.get("baseline_dir"):
        return f"trained before, loaded; rounds retrain on {row['train_size']:,} images"
    return f"{row['baseline_epochs']} epochs, {row['train_size']:,} training images"


def markdown(rows: list[dict]) -> str:
    lines = ["| network | run | rounds (rolled back) | compression | val error | test error | wall time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a, p = r["before"], r["after"], r["torch_prune"]
        ramp = a["ramp"] or {}
        verdict = "kept" if ramp.get("kept") else "not kept"
        errors = [100 * (1 - ramp.get(f"val_accuracy_{when}", 1)) for when in ("before", "after")]
        lines += [
            f"| {r['model']} | baseline ({_baseline_label(r)}) | - | "
            f"1.0x | {b['baseline_val_error']:.2f}% | {b['baseline_test_error']:.2f}% | "
            f"{r['train_seconds'] / 60:.1f} min |",
            f"| {r['model']} | before: secateur search (han, max-drop {r['max_drop']:g}) | {b['rounds']} "
            f"({b['rolled_back']}) | {b['compression']:.1f}x | {b['val_error']:.2f}% | {b['test_error']:.2f}% | "
            f"{b['seconds'] / 60:.1f} min |",
            f"| {r['model']} | after: same search + ramp ({ramp.get('epochs')} epochs, {verdict}: val "
            f"{errors[0]:.2f}% -> {errors[1]:.2f}%, "
            f"nonzero {ramp.get('params_nonzero_before')} -> {ramp.get('params_nonzero_after')}) | {a['rounds']} "
            f"({a['rolled_back']}) | {a['compression']:.1f}x | {a['val_error']:.2f}% | {a['test_error']:.2f}% | "
            f"{a['seconds'] / 60:.1f} min |",
            f"| {r['model']} | torch.nn.utils.prune global L1, {p['retrain_rounds']} rounds + {p['final_epochs']} "
            f"epochs (the after run's budget) | {p['retrain_rounds']} (0) | {p['compression']:.1f}x | "
            f"{p['val_error']:.2f}% | {p['test_error']:.2f}% | {p['seconds'] / 60:.1f} min |",
        ]
    labels = [f"{r['model']}: shortened budget {r['budget']}" for r in rows if r["budget"]]
    notes = "\n".join(f"- {label}" for label in labels)
    return "\n".join(lines) + "\n" + (f"\n{notes}\n" if notes else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--max-drop", type=float, default=0.1)
    parser.add_argument("--full", action="store_true", help="the full recipe and search defaults (hours on a CPU)")
    parser.add_argument("--baseline-dir", type=Path, help="a trained baseline folder to start from (one model)")
    parser.add_argument("--smoke", action="store_true", help="a tiny budget: checks the script runs")
    parser.add_argument("--json", type=Path, default=RESULTS / "search_waste.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "search_waste.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    previous = json.loads(args.json.read_text()) if args.json.exists() else {}
    rows = {row["model"]: row for row in previous.get("rows", [])}
    for name in args.models.split(","):
        rows[name] = run_model(name, args.max_drop, args.full, args.smoke, args.baseline_dir)
        args.json.write_text(json.dumps({"threads": 1, "torch": torch.__version__, "rows": list(rows.values())},
                                        indent=2) + "\n")
        args.md.write_text("# A search that wastes less\n\n" + markdown(list(rows.values())))
    print(markdown(list(rows.values())))


if __name__ == "__main__":
    main()
