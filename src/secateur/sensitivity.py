"""Per-layer sensitivity: prune one layer at a time and watch validation accuracy.

Han et al. chose each layer's quality parameter by hand from such curves. Here the choice
is automatic: for each layer, the largest strength whose single-layer drop (no retraining)
stays within ``tolerance`` points is what the layer "tolerates"; the per-layer factors are
those strengths divided by their parameter-weighted mean, so layers that tolerate more are
pruned more while the search strength keeps its meaning (about log2 of the compression).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .criteria import CRITERIA
from .errors import ConfigError
from .masks import effective, prunable_names
from .progress import progress_bar
from .schedules import Pruner

DEFAULT_STRENGTHS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0)


def layer_curves(model: nn.Module, evaluate: Callable[[nn.Module], float], *, method: str = "han",
                 targets: Sequence[str] | None = None, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                 progress: bool = False) -> dict[str, list[dict]]:
    """Validation accuracy when only one layer is pruned, for each layer and strength."""
    if method == "global-magnitude":
        raise ConfigError("sensitivity needs a per-layer method (han, magnitude, random), not global-magnitude")
    criterion = CRITERIA.get(method)
    targets = tuple(targets or prunable_names(model))
    curves: dict[str, list[dict]] = {}
    with progress_bar(progress, len(targets) * len(strengths), "sensitivity") as advance:
        for name in targets:
            reference = {name: float(effective(model, name).detach().float().std())}
            pruner = Pruner(criterion, (name,), {}, reference)
            curves[name] = [_point(model, pruner, name, x, evaluate, advance) for x in strengths]
    return curves


def _point(model: nn.Module, pruner: Pruner, name: str, strength: float,
           evaluate: Callable[[nn.Module], float], advance: Callable[..., None]) -> dict:
    candidate = copy.deepcopy(model)
    pruner.prune(candidate, strength)
    tensor = effective(candidate, name)
    point = {"strength": strength, "level": pruner.levels(strength)[name],
             "kept": int(torch.count_nonzero(tensor)) / tensor.numel(), "val_accuracy": evaluate(candidate)}
    advance(status=f"{name} x={strength:g}: {100 * point['val_accuracy']:.2f}%")
    return point


def tolerated_strength(points: Sequence[Mapping], baseline: float, tolerance: float) -> float:
    """The largest strength before the first point whose drop exceeds ``tolerance`` points."""
    best = points[0]["strength"] / 2 if points else 0.0
    for point in points:
        if 100.0 * (baseline - point["val_accuracy"]) > tolerance:
            break
        best = point["strength"]
    return best


def choose_factors(model: nn.Module, curves: Mapping[str, Sequence[Mapping]], baseline: float,
                   tolerance: float = 1.0) -> dict[str, float]:
    """Per-layer strength factors: tolerated strength / its parameter-weighted mean."""
    tolerated = {name: tolerated_strength(points, baseline, tolerance) for name, points in curves.items()}
    sizes = {name: effective(model, name).numel() for name in curves}
    mean = sum(tolerated[n] * sizes[n] for n in curves) / max(sum(sizes.values()), 1)
    if mean <= 0:
        return {name: 1.0 for name in curves}
    return {name: max(tolerated[name], 1e-3) / mean for name in curves}


def sensitivity(model: nn.Module, evaluate: Callable[[nn.Module], float], *, method: str = "han",
                targets: Sequence[str] | None = None, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                tolerance: float = 1.0, progress: bool = False) -> dict:
    """Curves and chosen factors, in the form saved as ``sensitivity.json``."""
    baseline = evaluate(model)
    curves = layer_curves(model, evaluate, method=method, targets=targets, strengths=strengths, progress=progress)
    return {"method": method, "baseline_val": baseline, "tolerance": tolerance, "layers": curves,
            "factors": choose_factors(model, curves, baseline, tolerance)}
