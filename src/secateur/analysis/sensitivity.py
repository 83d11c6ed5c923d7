"""Per-layer sensitivity: prune one layer at a time and watch validation accuracy.

Han et al. chose each layer's quality parameter by hand from such curves. Here the choice
is automatic (:func:`allocate`): per-layer strengths that remove the most weights for a
total single-layer accuracy loss of ``tolerance`` points. The factors are those strengths
divided by their parameter-weighted mean, so layers that tolerate more (weighted by their
size) are pruned more while the search strength keeps its meaning (about log2 of the
compression).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.progress import progress_bar
from secateur.unstructured.masks import effective, prunable_names
from secateur.unstructured.methods import WEIGHT_METHODS, global_magnitude_masks
from secateur.unstructured.pruner import WeightPruner, reference_stds

DEFAULT_STRENGTHS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0)


def layer_curves(model: nn.Module, evaluate: Callable[[nn.Module], float], *, method: str = "han",
                 targets: Sequence[str] | None = None, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                 progress: bool = False) -> dict[str, list[dict]]:
    """Validation accuracy when only one layer is pruned, for each layer and strength."""
    entry = WEIGHT_METHODS.get(method)
    if entry.scope == "global":
        per_layer = [name for name in WEIGHT_METHODS.names() if WEIGHT_METHODS.get(name).scope != "global"]
        raise ConfigError(f"sensitivity needs a per-layer method ({', '.join(per_layer)}), not {method}")
    targets = tuple(targets or prunable_names(model))
    curves: dict[str, list[dict]] = {}
    with progress_bar(progress, len(targets) * len(strengths), "sensitivity") as advance:
        for name in targets:
            reference = reference_stds(model, (name,))
            pruner = WeightPruner(entry, (name,), {}, reference)
            curves[name] = [_point(model, pruner, name, x, evaluate, advance) for x in strengths]
    return curves


def _point(model: nn.Module, pruner: WeightPruner, name: str, strength: float,
           evaluate: Callable[[nn.Module], float], advance: Callable[..., None]) -> dict:
    candidate = copy.deepcopy(model)
    pruner.prune(candidate, strength)
    tensor = effective(candidate, name)
    levels = pruner.levels(strength)
    assert isinstance(levels, dict), "per-layer methods only (layer_curves refuses global ones)"
    point = {"strength": strength, "level": levels[name],
             "kept": int(torch.count_nonzero(tensor)) / tensor.numel(), "val_accuracy": evaluate(candidate)}
    advance(status=f"{name} x={strength:g}: {100 * point['val_accuracy']:.2f}%")
    return point


def _cost(point: Mapping | None, baseline: float) -> float:
    """Accuracy points lost at a curve point (0 for the unpruned layer)."""
    return 0.0 if point is None else max(0.0, 100.0 * (baseline - point["val_accuracy"]))


def allocate(curves: Mapping[str, Sequence[Mapping]], sizes: Mapping[str, int], baseline: float,
             tolerance: float) -> dict[str, float]:
    """Per-layer strengths that remove the most weights for ``tolerance`` points in total.

    Greedy: repeatedly move one layer one step along its curve, choosing the step with the
    most weights removed per point of (single-layer) accuracy lost, while the summed loss
    stays within ``tolerance``. Big layers that lose little are pushed furthest, which is
    what Han et al. did by hand (LeNet-5: conv1 kept 66%, fc1 kept 8%).
    """
    position = dict.fromkeys(curves, -1)
    spent = 0.0
    while True:
        best, best_gain, best_cost = None, 0.0, 0.0
        for name, points in curves.items():
            index = position[name] + 1
            if index >= len(points):
                continue
            current = points[position[name]] if position[name] >= 0 else None
            extra = max(_cost(points[index], baseline) - _cost(current, baseline), 0.0)
            removed = sizes[name] * ((current["kept"] if current else 1.0) - points[index]["kept"])
            gain = removed / (extra + 0.01)
            if spent + extra <= tolerance and gain > best_gain:
                best, best_gain, best_cost = name, gain, extra
        if best is None:
            break
        position[best] += 1
        spent += best_cost
    smallest = min(points[0]["strength"] for points in curves.values()) / 4
    return {name: curves[name][i]["strength"] if i >= 0 else smallest for name, i in position.items()}


def choose_factors(model: nn.Module, curves: Mapping[str, Sequence[Mapping]], baseline: float,
                   tolerance: float = 1.0) -> dict[str, float]:
    """Per-layer strength factors: allocated strength / its parameter-weighted mean."""
    sizes = {name: effective(model, name).numel() for name in curves}
    strengths = allocate(curves, sizes, baseline, tolerance)
    mean = sum(strengths[n] * sizes[n] for n in curves) / max(sum(sizes.values()), 1)
    return {name: strengths[name] / mean for name in curves}


def sensitivity(model: nn.Module, evaluate: Callable[[nn.Module], float], *, method: str = "han",
                targets: Sequence[str] | None = None, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                tolerance: float = 1.0, progress: bool = False) -> dict:
    """Curves and chosen factors, in the form saved as ``sensitivity.json``."""
    baseline = evaluate(model)
    curves = layer_curves(model, evaluate, method=method, targets=targets, strengths=strengths, progress=progress)
    return {"method": method, "baseline_val": baseline, "tolerance": tolerance, "layers": curves,
            "factors": choose_factors(model, curves, baseline, tolerance)}


def magnitude_factors(model: nn.Module, targets: Sequence[str], reference_sparsity: float = 0.9) -> dict[str, float]:
    """Per-layer factors from where one global |w| threshold would cut the dense weights.

    Layers whose weights are small relative to the rest (big fully connected layers) get
    larger factors; small layers with large weights (the classifier, the first conv) get
    smaller ones. Needs no data. Factors are normalised like :func:`choose_factors`.
    """
    weights = {name: effective(model, name).detach() for name in targets}
    masks = global_magnitude_masks(weights, reference_sparsity)
    sizes = {name: w.numel() for name, w in weights.items()}
    kept = {name: max(float(masks[name].float().mean()), 1.0 / sizes[name]) for name in targets}
    strengths = {name: max(-math.log2(kept[name]), 0.05) for name in targets}
    mean = sum(strengths[n] * sizes[n] for n in targets) / sum(sizes.values())
    return {name: strengths[name] / mean for name in targets}
