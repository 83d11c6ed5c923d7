"""The worker side of ``secateur sweep --workers N``: one method's curve, rebuilt from plain data.

A spawned worker process receives a :class:`SweepTask` (names, paths, numbers: nothing that needs
pickled code or tensors), loads the dataset and the baseline checkpoint itself, and computes the
curve with the sequential sweep's retraining and seeds, so its points are the ones
``--workers 1`` computes at the same thread count. This module imports no plotting code, so a
worker starts quickly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from secateur.analysis.sweep import DEFAULT_SCHEDULE, method_curve
from secateur.io import rundir
from secateur.io.storage import load_model
from secateur.search.orchestrator import default_callables
from secateur.train import TrainConfig, evaluate
from secateur.zoo.data import load_dataset

SWEEP_SCHEDULE = DEFAULT_SCHEDULE  # the default: each point of a sweep's curve continues the last


@dataclass(frozen=True)
class SweepTask:
    """One method's curve of a sweep, as plain data a spawned worker rebuilds everything from."""

    dataset: str
    data_dir: str | None
    baseline: str  # a checkpoint, or a folder holding one
    retrain: dict  # TrainConfig.to_dict() of the rounds' retraining
    method: str
    strengths: tuple[float, ...]
    schedule: str = SWEEP_SCHEDULE
    test: bool = False  # also measure each point's test accuracy


def sweep_curve(task: SweepTask) -> list[dict]:
    """One method's points, computed exactly as the sequential sweep computes them."""
    data = load_dataset(task.dataset, task.data_dir)
    model, _ = load_model(rundir.checkpoint_in(task.baseline))
    make_train, _, _ = default_callables(data, TrainConfig.from_dict(task.retrain))
    test = functools.partial(evaluate, data=data, split="test") if task.test else None
    return method_curve(model, task.method, strengths=task.strengths, make_train=make_train,
                        evaluate=functools.partial(evaluate, data=data, split="val"), schedule=task.schedule,
                        test=test)
