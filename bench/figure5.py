"""Han et al. (2015) Figure 5 on LeNet-300-100 and LeNet-5: accuracy loss against parameters pruned away.

Five curves, as in the paper: L2 regularisation without retraining, L1 without retraining, L1 with
retraining, L2 with retraining, L2 with iterative prune and retrain. Each curve is one secateur
sweep (:func:`secateur.analysis.sweep.sweep`, what ``secateur sweep`` runs) of one weight method
(default ``global-magnitude``) over the strengths of the given fractions pruned (strength
``-log2(1 - fraction)``), from a trained baseline:

| curve | baseline | ``secateur sweep`` options |
|---|---|---|
| L2 w/o retrain | ``{net}-l2`` (weight_decay) | ``--schedule oneshot --retrain-epochs 0`` |
| L1 w/o retrain | ``{net}-l1`` (``l1`` > 0, weight_decay 0) | ``--schedule oneshot --retrain-epochs 0`` |
| L1 w/ retrain | ``{net}-l1`` | ``--schedule oneshot --retrain-epochs E`` |
| L2 w/ retrain | ``{net}-l2`` | ``--schedule oneshot --retrain-epochs E`` |
| L2 iterative | ``{net}-l2`` | ``--schedule iterative --retrain-epochs E`` |

Retraining keeps the baseline's regulariser (its recipe, at the sweep's retraining learning rate).
Accuracy loss is test accuracy of the pruned model minus its own dense baseline's (the test set
chooses nothing here: a sweep has no decisions). Baselines missing under ``--baselines`` are
trained: L2 with the zoo recipe; L1 with the same recipe at ``l1=--l1`` and no weight decay, or
(``--l1-finetune N``) as the L2 baseline fine-tuned N epochs with the L1 penalty (over the
``--retrain-subset`` images, when given), at half the recipe's learning rate.

    python bench/figure5.py --nets lenet300,lenet5 --baselines runs/figure5 [--retrain-epochs 1]
                            [--retrain-subset 20000] [--fractions lenet5=0.5,0.8,0.9,0.95]

Curves already computed with the same settings (``{baselines}/{net}/{curve}.json``) are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import secateur  # first: sets OMP_WAIT_POLICY before torch loads
from secateur.analysis.sweep import sweep
from secateur.io import rundir
from secateur.io.storage import load_model
from secateur.report.figures import accuracy_loss_figure, png_bytes
from secateur.search.config import PruneConfig
from secateur.search.orchestrator import default_callables, retrain_config
from secateur.train import evaluate
from secateur.zoo.baseline import default_config, train_baseline
from secateur.zoo.data import Dataset, load_dataset

RESULTS = Path(__file__).resolve().parent / "results"
FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97)
CURVES = (  # key, Han's label, baseline, schedule, retrained
    ("l2-noretrain", "L2 regularization w/o retrain", "l2", "oneshot", False),
    ("l1-noretrain", "L1 regularization w/o retrain", "l1", "oneshot", False),
    ("l1-retrain", "L1 regularization w/ retrain", "l1", "oneshot", True),
    ("l2-retrain", "L2 regularization w/ retrain", "l2", "oneshot", True),
    ("l2-iterative", "L2 regularization w/ iterative prune and retrain", "l2", "iterative", True),
)
NAMES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}


def strength_of(fraction: float) -> float:
    """The sweep strength that removes ``fraction`` of the weights (x halvings: 1 - 2**-x)."""
    return -math.log2(1.0 - fraction)


def baseline(net: str, kind: str, data: Dataset, args: argparse.Namespace) -> Path:
    """The folder of the ``kind`` (l2 / l1) baseline of ``net``, trained there first when missing."""
    out = args.baselines / f"{net}-{kind}"
    if (out / rundir.WEIGHTS).is_file():
        return out
    recipe = default_config(net)
    if kind == "l2":
        train_baseline(net, data, out=out, config=recipe, progress=True)
    elif args.l1_finetune:
        l2, subset = baseline(net, "l2", data, args), per_net(args.retrain_subset, net)
        config = recipe.replace(epochs=args.l1_finetune, l1=args.l1, weight_decay=0.0, lr=recipe.lr / 2)
        train_baseline(net, data if subset is None else data.subset(train=subset), out=out, config=config,
                       weights=l2 / rundir.WEIGHTS, progress=True)
    else:
        train_baseline(net, data, out=out, config=recipe.replace(l1=args.l1, weight_decay=0.0), progress=True)
    return out


def curve(net: str, spec: tuple, data: Dataset, fractions: list[float], args: argparse.Namespace) -> dict | None:
    """One curve: a one-method sweep from the curve's baseline (reused from its JSON when unchanged)."""
    key, label, kind, schedule, retrained = spec
    source = baseline(net, kind, data, args)
    epochs, subset = (args.retrain_epochs if retrained else 0), per_net(args.retrain_subset, net)
    settings = {"baseline": str(source), "method": args.method, "schedule": schedule, "retrain_epochs": epochs,
                "retrain_subset": subset if epochs else None, "fractions": fractions}
    saved = args.baselines / net / f"{key}.json"
    if saved.is_file() and json.loads(saved.read_text()).get("settings") == settings:
        return json.loads(saved.read_text())
    if args.saved_only:
        return None
    model, meta = load_model(rundir.checkpoint_in(source))
    retrain = retrain_config(PruneConfig(retrain_epochs=epochs), secateur.TrainConfig.from_dict(meta["train"]))
    train_data = data if subset is None else data.subset(train=int(subset))
    make_train, _, _ = default_callables(train_data, retrain)
    start = time.perf_counter()
    result = sweep(model, [args.method], make_train=make_train, strengths=[strength_of(f) for f in fractions],
                   evaluate=lambda m: evaluate(m, data, "val"), test=lambda m: evaluate(m, data, "test"),
                   schedule=schedule, progress=True)
    row = {"key": key, "label": label, "settings": settings, "seconds": time.perf_counter() - start,
           "baseline_train": meta["train"], "baseline_weights": meta.get("weights"),
           "retrain": retrain.to_dict(), "baseline": result["baseline"],
           "points": [_point(p, f, result["baseline"]) for p, f in zip(result["methods"][args.method], fractions)]}
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(row, indent=1))
    return row


def _point(point: dict, fraction: float, base: dict) -> dict:
    """A sweep point with the share pruned (measured) and the accuracy changes against its own baseline."""
    pruned = 100 * (1 - 1 / point["compression"])
    return {"fraction": fraction, "pruned_pct": pruned, "compression": point["compression"],
            "val_change": 100 * (point["val_accuracy"] - base["val"]["accuracy"]),
            "test_change": 100 * (point["test_accuracy"] - base["test"]["accuracy"]),
            "test_accuracy": point["test_accuracy"], "val_accuracy": point["val_accuracy"]}


def _recipe(row: dict) -> str:
    """How a curve's baseline was trained, in a few words."""
    train = row.get("baseline_train") or {}
    start = "fine-tuned from the L2 baseline" if row.get("baseline_weights") else "from scratch"
    return (f"{train.get('epochs')} epochs {start}, lr {train.get('lr')}, weight_decay {train.get('weight_decay')}, "
            f"l1 {train.get('l1') or 0}")


def markdown(results: dict) -> str:
    """Per network: accuracy change (test, points) at each fraction pruned, one column per curve."""
    lines = [f"Method `{results['method']}`; test accuracy change in points (pruned - its own dense baseline); "
             "wall times on the shared 2-core CPU, one thread.", ""]
    for net, entry in results["nets"].items():
        curves = entry["curves"]
        base = ", ".join(f"{k.upper()} {100 * (1 - v['test']):.2f}% (val {100 * (1 - v['val']):.2f}%)"
                         for k, v in entry["baselines"].items())
        recipes = "; ".join(f"{k.upper()}: {v}" for k, v in entry.get("recipes", {}).items())
        lines += [f"**{NAMES.get(net, net)}** (dense test error: {base}; retraining: {entry['retraining']}; "
                  f"baselines: {recipes})", "",
                  "| pruned away | " + " | ".join(c["label"] for c in curves) + " |",
                  "|---:|" + "---:|" * len(curves)]
        for i, fraction in enumerate(entry["fractions"]):
            cells = [f"{c['points'][i]['test_change']:+.2f}" for c in curves]
            lines.append(f"| {100 * fraction:g}% | " + " | ".join(cells) + " |")
        lines += ["| wall time | " + " | ".join(f"{c['seconds']:.0f} s" for c in curves) + " |", ""]
        if entry.get("not_run"):
            lines += ["Not run (time ran out): " + ", ".join(entry["not_run"]), ""]
    return "\n".join(lines)


def figure(net: str, entry: dict, retraining: str) -> bytes:
    """Han's Figure 5 for one network, as PNG bytes."""
    curves = {c["label"]: [(p["pruned_pct"], p["test_change"]) for p in c["points"]] for c in entry["curves"]}
    fig = accuracy_loss_figure(curves, title=f"{NAMES.get(net, net)} on MNIST: Han et al. (2015) Figure 5",
                               note=f"measured; retraining {retraining}")
    return png_bytes(fig)


def parse_fractions(text: str) -> dict[str, list[float]]:
    """``0.5,0.9`` (every net) or ``lenet5=0.5,0.9;lenet300=...`` (per net)."""
    return {net: [float(v) for v in values.split(",")] for net, values in per_net_text(text).items()}


def per_net_text(text: str) -> dict[str, str]:
    """``VALUE`` (every net: key ``*``) or ``net=VALUE;net=VALUE``."""
    if "=" not in text:
        return {"*": text}
    pairs = (part.split("=", 1) for part in text.split(";") if part.strip())
    return {net.strip(): value.strip() for net, value in pairs}


def per_net(values: dict[str, str], net: str) -> int | None:
    """``net``'s integer from a per-net option (None: not given)."""
    value = values.get(net, values.get("*"))
    return None if value in (None, "", "all") else int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="lenet300,lenet5")
    parser.add_argument("--baselines", type=Path, default=Path("runs/figure5"))
    parser.add_argument("--fractions", type=parse_fractions, default={"*": list(FRACTIONS)})
    parser.add_argument("--method", default="global-magnitude")
    parser.add_argument("--retrain-epochs", type=int, default=1)
    parser.add_argument("--retrain-subset", type=per_net_text, default={},
                        help="training images used when retraining: N or net=N;net=N (default all)")
    parser.add_argument("--l1", type=float, default=1e-5, help="the L1 baselines' penalty")
    parser.add_argument("--l1-finetune", type=int, default=0, help="L1 baseline = L2 one + N epochs of L1")
    parser.add_argument("--curves", default=None, help="only these curves (keys, e.g. l2-iterative; default all)")
    parser.add_argument("--saved-only", action="store_true",
                        help="draw the curves already computed, leave the others out (named in the JSON / MD)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=RESULTS / "figure5.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "figure5.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist")
    results = json.loads(args.json.read_text()) if args.json.is_file() else {"nets": {}}
    results.update(method=args.method, threads=args.threads)
    for net in [n.strip() for n in args.nets.split(",") if n.strip()]:
        fractions = args.fractions.get(net, args.fractions.get("*", list(FRACTIONS)))
        subset = per_net(args.retrain_subset, net)
        retraining = (f"{args.retrain_epochs} epoch(s) over {'all 55,000' if subset is None else f'{subset:,}'} "
                      "training images per point")
        found = [(spec[1], curve(net, spec, data, fractions, args)) for spec in CURVES
                 if args.curves is None or spec[0] in args.curves.split(",")]
        curves = [c for _, c in found if c is not None]
        if not curves:
            continue
        bases = {kind: next(c["baseline"] for c in curves if c["settings"]["baseline"].endswith(f"-{kind}"))
                 for kind in ("l2", "l1") if any(c["settings"]["baseline"].endswith(f"-{kind}") for c in curves)}
        results["nets"][net] = {"fractions": fractions, "curves": curves, "retraining": retraining,
                                "not_run": [label for label, c in found if c is None],
                                "baselines": {k: {"val": b["val"]["accuracy"], "test": b["test"]["accuracy"]}
                                              for k, b in bases.items()},
                                "recipes": {c["settings"]["baseline"].rsplit("-", 1)[-1]: _recipe(c) for c in curves}}
        (args.json.parent / f"figure5_{net}.png").write_bytes(figure(net, results["nets"][net], retraining))
        args.json.write_text(json.dumps(results, indent=1))
        args.md.write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
