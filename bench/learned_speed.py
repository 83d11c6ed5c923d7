"""One epoch of the learned methods' training phases against one dense epoch, in CPU seconds.

The dense epoch is :func:`secateur.fit` with the network's baseline recipe; the phases are
Sparse VD's (:func:`~secateur.unstructured.variational.learn_sparse_vd`) and L0's
(:func:`~secateur.structured.l0.learn_l0`), each through the same trainer
(:func:`~secateur.search.orchestrator.learning_trainer`, one learn epoch). CPU time of this
process (one thread), not wall time: on a shared machine the wall clock mostly measures the
other users.

    python bench/learned_speed.py [--models lenet300,lenet5] [--md FILE]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur.search.config import PruneConfig
from secateur.search.orchestrator import learning_trainer
from secateur.structured.l0 import learn_l0
from secateur.train import fit
from secateur.unstructured.masks import prunable_names
from secateur.unstructured.variational import learn_sparse_vd
from secateur.zoo.baseline import default_config
from secateur.zoo.data import load_dataset
from secateur.zoo.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_seconds(run: Callable[[], object]) -> float:
    """CPU seconds this process spends in ``run()``."""
    start = time.process_time()
    run()
    return time.process_time() - start


def epochs(name: str, data) -> dict[str, float]:
    """CPU seconds of one dense epoch and one epoch of each learned phase, from fresh weights."""
    recipe = default_config(name)
    trainer = learning_trainer(data, recipe, PruneConfig(method="sparse-vd", learn_epochs=1))
    shape = tuple(data.train.images.shape[1:])
    runs = {"dense (fit, baseline recipe)": lambda m: fit(m, data, recipe.replace(epochs=1), progress=False),
            "sparse-vd phase": lambda m: learn_sparse_vd(m, tuple(prunable_names(m)), trainer),
            "l0 phase": lambda m: learn_l0(m, tuple(prunable_names(m)), trainer, input_shape=shape)}
    return {label: cpu_seconds(lambda run=run: run(build_model(name))) for label, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--md", type=Path, default=RESULTS / "learned_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist")
    lines = ["| network | epoch of | CPU seconds | x dense |", "|---|---|---:|---:|"]
    for name in args.models.split(","):
        times = epochs(name, data)
        dense = next(iter(times.values()))
        lines += [f"| {name} | {label} | {t:.1f} | {t / dense:.2f} |" for label, t in times.items()]
        print("\n".join(lines), flush=True)
    args.md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
