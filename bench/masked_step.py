"""The cost of one masked training step against a dense one, old path and new, in one run.

For each model: a dense copy, a copy with random 90% masks trained through the ``where``
parametrization (the old path, still what a user's own loop gets), and the same masks under
:func:`secateur.unstructured.masks.trusted_masks` (what :func:`secateur.fit` does since: the
forward returns the stored original, the optimizer's gradients are masked in place before each
step). One step = zero_grad, forward, cross-entropy, backward, SGD step (Nesterov momentum 0.9,
weight decay 5e-4, as ``fit``), batch 128, one thread. The three are stepped in turn, so load on
the machine hits them alike; the median over ``--steps`` steps (after a warm-up) is reported,
and the ratio masked / dense.

    python bench/masked_step.py [--models lenet300,lenet5] [--steps 300] [--sparsity 0.9] [--json F] [--md F]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import secateur  # first: sets OMP_WAIT_POLICY before torch loads
from secateur.unstructured.masks import apply_masks, effective, prunable_names, trusted_masks

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP = 20


def masked_copy(dense: nn.Module, sparsity: float) -> nn.Module:
    """``dense`` with random masks keeping ``1 - sparsity`` of every prunable weight."""
    model = copy.deepcopy(dense)
    g = torch.Generator().manual_seed(0)
    apply_masks(model, {n: torch.rand(effective(model, n).shape, generator=g) >= sparsity
                        for n in prunable_names(model)})
    return model


def stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """One training step of ``model`` on (x, y), and its optimizer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step, optimizer


def measure(name: str, steps: int, sparsity: float) -> dict:
    """Median step seconds of the dense, old masked and new masked paths on ``name``."""
    torch.manual_seed(0)
    dense = secateur.build_model(name)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    variants = {"dense": dense, "old": masked_copy(dense, sparsity), "new": masked_copy(dense, sparsity)}
    steps_of = {key: stepper(model.train(), x, y) for key, model in variants.items()}
    seconds: dict[str, list[float]] = {key: [] for key in variants}
    with contextlib.ExitStack() as stack:
        stack.enter_context(trusted_masks(variants["new"], steps_of["new"][1]))
        for i in range(steps + WARMUP):
            for key in list(variants)[i % 3:] + list(variants)[: i % 3]:
                start = time.perf_counter()
                steps_of[key][0]()
                if i >= WARMUP:
                    seconds[key].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in seconds.items()}
    fastest = {key: min(values) for key, values in seconds.items()}
    return {"model": name, "steps": steps, "sparsity": sparsity, "batch": 128, "threads": torch.get_num_threads(),
            "ms": {key: 1e3 * value for key, value in median.items()},
            "ratio_old": median["old"] / median["dense"], "ratio_new": median["new"] / median["dense"],
            "min_ms": {key: 1e3 * value for key, value in fastest.items()},
            "min_ratio_old": fastest["old"] / fastest["dense"], "min_ratio_new": fastest["new"] / fastest["dense"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | dense step (ms) | masked, old: where parametrization (ms) | ratio | "
             "masked, new: trusted in fit (ms) | ratio | ratios of the fastest steps (old, new) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms"]
        lines.append(f"| {r['model']} | {ms['dense']:.2f} | {ms['old']:.2f} | {r['ratio_old']:.3f}x | "
                     f"{ms['new']:.2f} | {r['ratio_new']:.3f}x | "
                     f"{r['min_ratio_old']:.3f}x, {r['min_ratio_new']:.3f}x |")
    r0 = rows[0]
    lines.append(f"\nBatch {r0['batch']}, {r0['threads']} thread, {100 * r0['sparsity']:.0f}% random masks, "
                 "SGD (Nesterov momentum 0.9, weight decay 5e-4); median of "
                 + ", ".join(f"{r['steps']} steps ({r['model']})" for r in rows)
                 + ", the three paths stepped in turn (the machine's other load hits them alike).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per path (LeNet-5: a third)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--json", type=Path, default=RESULTS / "masked_step.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "masked_step.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(name, args.steps if name == "lenet300" else max(args.steps // 3, 10), args.sparsity)
            for name in args.models.split(",")]
    table = markdown(rows)
    print(table)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    args.md.write_text("# A masked training step against a dense one\n\n" + table)


if __name__ == "__main__":
    main()
