"""One cut of a fixed amount: ``secateur.prune_weights`` against ``torch.nn.utils.prune``, in one run.

For each model and each pair (``global-magnitude`` / ``global_unstructured(L1Unstructured)``,
``magnitude`` / ``l1_unstructured`` per layer) at ``--amount``: the masks must agree, and the
median seconds of one call (fresh copies of the dense model, one thread) are compared as a ratio
(secateur / torch: below 1 means secateur is faster, above 1 slower). Each timed call includes a
deepcopy of the dense model, for both.

    python bench/fixed_amount.py [--models lenet300,resnet-mnist,torchvision:resnet18] [--amount 0.9]
                                 [--repeats 5] [--json FILE] [--md FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.utils.prune as torch_prune

import secateur  # first: sets OMP_WAIT_POLICY before torch loads
from secateur.unstructured.masks import prunable_names

RESULTS = Path(__file__).resolve().parent / "results"
PAIRS = {"global-magnitude": "global_unstructured", "magnitude": "l1_unstructured"}


def torch_cut(model: torch.nn.Module, names: list[str], kind: str, amount: float) -> dict[str, torch.Tensor]:
    """``torch.nn.utils.prune``'s masks for ``names`` of ``model`` (pruned in place)."""
    layers = [(model.get_submodule(n.rsplit(".", 1)[0]), "weight") for n in names]
    if kind == "global_unstructured":
        torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=amount)
    else:
        for module, name in layers:
            torch_prune.l1_unstructured(module, name, amount=amount)
    return {n: m.weight_mask.bool() for n, (m, _) in zip(names, layers)}


def timed(call: Callable[[], dict], repeats: int) -> tuple[float, dict]:
    """Median seconds of ``call`` over ``repeats`` runs, and its last result."""
    seconds, result = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def row(name: str, method: str, amount: float, repeats: int) -> dict:
    torch.manual_seed(0)
    dense = secateur.build_model(name)
    names = prunable_names(dense)
    ours_s, ours = timed(lambda: secateur.prune_weights(copy.deepcopy(dense), amount=amount, method=method), repeats)
    theirs_s, theirs = timed(lambda: torch_cut(copy.deepcopy(dense), names, PAIRS[method], amount), repeats)
    total = sum(m.numel() for m in ours.values())
    same = sum(int((ours[n] == theirs[n]).sum()) for n in names)
    return {"model": name, "method": method, "torch": PAIRS[method], "amount": amount, "weights": total,
            "agree": same / total, "secateur_s": ours_s, "torch_s": theirs_s, "ratio": ours_s / theirs_s}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | secateur | torch.nn.utils.prune | weights | masks agree | secateur s | torch s | ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['method']} | {r['torch']} | {r['weights']:,} | {100 * r['agree']:.4f}% | "
              f"{r['secateur_s']:.4f} | {r['torch_s']:.4f} | {r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,resnet-mnist,torchvision:resnet18")
    parser.add_argument("--amount", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS / "fixed_amount.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "fixed_amount.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row(name, method, args.amount, args.repeats) for name in args.models.split(",") for method in PAIRS]
    table = markdown(rows)
    print(table)
    args.json.write_text(json.dumps({"amount": args.amount, "threads": 1, "rows": rows}, indent=2) + "\n")
    args.md.write_text(f"One cut at amount {args.amount}, one thread, median of {args.repeats} calls; each call "
                       f"includes a deepcopy of the dense model (both columns).\n\n{table}")


if __name__ == "__main__":
    main()
