"""Trade-off curves: validation accuracy versus size for several methods, side by side.

Unlike :func:`secateur.prune`, a sweep has no bound: each method walks the same list of
strengths with the same schedule and retraining budget, so the curves compare methods at
equal cost. The points land in ``sweep.json`` and one plot (``secateur sweep``). The schedule is
``iterative`` (each point continues the last) or ``oneshot`` (each point pruned from the dense
baseline); with no retraining epochs either one maps pruning alone. A ``test`` evaluator adds each
point's test accuracy, reported only: a sweep chooses nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from secateur.analysis.metrics import count_params
from secateur.errors import ConfigError
from secateur.io.schemas import MAX_STRENGTH
from secateur.progress import progress_bar
from secateur.search.schedules import SCHEDULES
from secateur.unstructured.granularities import masked_copy
from secateur.unstructured.masks import prunable_names
from secateur.unstructured.methods import WEIGHT_METHODS
from secateur.unstructured.pruner import WeightPruner, reference_stds

DEFAULT_STRENGTHS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
DEFAULT_METHODS = ("han", "global-magnitude", "random")  # Han's, the strongest simple peer, the floor
DEFAULT_SCHEDULE = "iterative"  # each point of a curve continues the last


def check_strengths(strengths: Sequence[float]) -> None:
    """ConfigError (one line) unless ``strengths`` is a non-empty list of numbers in (0, MAX_STRENGTH]."""
    bad = [s for s in strengths if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= MAX_STRENGTH]
    if bad or not strengths:
        raise ConfigError(f"strengths must be numbers in (0, {MAX_STRENGTH:g}] (about log2 of the compression), "
                          f"got {bad[0] if bad else 'none'!r}")


def method_curve(model: nn.Module, method: str, *, strengths: Sequence[float],
                 make_train: Callable[[int], Callable[[nn.Module], None]],
                 evaluate: Callable[[nn.Module], float], schedule: str = DEFAULT_SCHEDULE,
                 seed: int = 0, advance: Callable[..., None] | None = None,
                 test: Callable[[nn.Module], float] | None = None) -> list[dict]:
    """One method's points along ``strengths`` (iterative: each point continues the last; oneshot:
    each starts from the baseline); ``test`` adds ``test_accuracy`` to every point."""
    targets = tuple(prunable_names(model))
    baseline = masked_copy(model, targets)
    pruner = WeightPruner(WEIGHT_METHODS.get(method), targets, {}, reference_stds(baseline, targets), seed)
    plan = SCHEDULES.get(schedule)
    params, base_val = count_params(baseline), evaluate(baseline)
    current, previous, points = baseline, 0.0, []
    for index, strength in enumerate(sorted(strengths), start=1):
        candidate = copy.deepcopy(baseline if plan.restart_from_baseline else current)
        plan.run(candidate, 0.0 if plan.restart_from_baseline else previous, strength, pruner,
                 make_train(index), None, {})
        accuracy, nonzero = evaluate(candidate), count_params(candidate, nonzero=True)
        points.append({"strength": strength, "level": pruner.levels(strength), "val_accuracy": accuracy,
                       "drop": 100 * (base_val - accuracy), "compression": params / max(nonzero, 1),
                       "params_nonzero": nonzero})
        if test is not None:
            points[-1]["test_accuracy"] = test(candidate)
        current, previous = candidate, strength
        if advance is not None:
            advance(status=f"{method} x={strength:g}: {points[-1]['compression']:.1f}x, "
                           f"drop {points[-1]['drop']:+.2f}")
    return points


def sweep(model: nn.Module, methods: Sequence[str], *, make_train: Callable[[int], Callable[[nn.Module], None]],
          evaluate: Callable[[nn.Module], float], strengths: Sequence[float] = DEFAULT_STRENGTHS,
          schedule: str = DEFAULT_SCHEDULE, seed: int = 0, progress: bool = False,
          test: Callable[[nn.Module], float] | None = None) -> dict:
    """Every method's curve, in the form saved as ``sweep.json``."""
    check_sweep(methods, strengths, schedule)
    with progress_bar(progress, len(methods) * len(strengths), "sweep") as advance:
        curves = {m: method_curve(model, m, strengths=strengths, make_train=make_train, evaluate=evaluate,
                                  schedule=schedule, seed=seed, advance=advance, test=test) for m in methods}
    return sweep_result(model, evaluate, curves, strengths, schedule, test)


def sweep_schedules() -> list[str]:
    """The schedules a sweep runs: those whose rounds are a cut then a retraining (not ``continuous``)."""
    return [name for name in SCHEDULES.names() if not SCHEDULES.get(name).continuous]


def check_sweep(methods: Sequence[str], strengths: Sequence[float], schedule: str = DEFAULT_SCHEDULE) -> None:
    """One-line ConfigErrors for unknown weight methods, bad strengths or a schedule a sweep cannot run,
    before any work starts."""
    check_strengths(strengths)
    for method in methods:
        WEIGHT_METHODS.get(method)
    if SCHEDULES.get(schedule).continuous:
        raise ConfigError(f"a sweep cannot run the {schedule!r} schedule (it prunes inside the training loop); "
                          f"use one of {', '.join(sweep_schedules())}")


def sweep_result(model: nn.Module, evaluate: Callable[[nn.Module], float], curves: dict[str, list[dict]],
                 strengths: Sequence[float], schedule: str, test: Callable[[nn.Module], float] | None = None
                 ) -> dict:
    """``sweep.json``'s content from the curves, however they were computed (here, or in workers)."""
    with torch.no_grad():
        baseline = {"val": {"accuracy": evaluate(model)}}
        if test is not None:
            baseline["test"] = {"accuracy": test(model)}
    return {"baseline": baseline, "schedule": schedule, "strengths": list(strengths), "methods": curves}
