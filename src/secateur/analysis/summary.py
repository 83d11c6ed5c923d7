"""What a pruned model measures against its baseline: sizes, per-layer rows, bytes, latency.

These numbers fill each round's ``history.jsonl`` row (:func:`round_stats`) and the final
``results.json`` (:func:`size_summary`), for weight and structured pruning alike: per-layer
``weights`` are the baseline's, so removed neurons count as pruned weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from secateur.analysis.metrics import (
    count_macs,
    count_params,
    layer_stats,
    measure_latency,
    zero_input,
)
from secateur.unstructured.masks import effective, make_permanent, masks_of


def round_stats(model: nn.Module, baseline: nn.Module, targets: tuple[str, ...],
                input_shape: tuple[int, ...] | None) -> dict:
    """Size of a model after a round: nonzero parameters, compression, per-layer counts.

    Per-layer ``total`` is the baseline's size, so removed neurons count as pruned weights.
    """
    nonzero = count_params(model, nonzero=True)
    layers = {}
    for name in targets:
        tensor = effective(model, name)
        layers[name] = {"total": effective(baseline, name).numel(), "nonzero": int(torch.count_nonzero(tensor))}
    return {
        "params_nonzero": nonzero, "compression": count_params(baseline) / max(nonzero, 1),
        "macs_nonzero": count_macs(model, input_shape, nonzero=True) if input_shape else None,
        "layers": layers,
    }


def layer_rows(model: nn.Module, baseline: nn.Module, targets: tuple[str, ...],
               input_shape: tuple[int, ...] | None) -> list[dict]:
    """Han et al.'s Table 2 rows: weights (of the baseline), nonzero, % kept and MACs per pruned layer."""
    before = {s.name: s for s in layer_stats(baseline, input_shape)} if input_shape else {}
    after = {s.name: s for s in layer_stats(model, input_shape)} if input_shape else {}
    rows = []
    for name in targets:
        tensor, weights = effective(model, name), effective(baseline, name).numel()
        module = name.rsplit(".", 1)[0]
        nonzero = int(torch.count_nonzero(tensor))
        rows.append({"name": name, "kind": before[module].kind if module in before else "",
                     "shape": list(tensor.shape), "weights": weights, "nonzero": nonzero,
                     "kept": nonzero / max(weights, 1),
                     "macs": before[module].macs if module in before else None,
                     "macs_nonzero": after[module].macs_nonzero if module in after else None})
    return rows


def channel_counts(model: nn.Module, baseline: nn.Module, targets: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Output channels / neurons per layer before and after structured pruning."""
    return {name.rsplit(".", 1)[0]: {"before": effective(baseline, name).shape[0],
                                     "after": effective(model, name).shape[0]}
            for name in targets if effective(baseline, name).dim() >= 1}


def latency_pair(baseline: nn.Module, model: nn.Module, input_shape: tuple[int, ...],
                 batch_sizes: tuple[int, ...] = (1, 32)) -> dict[str, float]:
    """CPU seconds per forward (median) of both models as deployed (masks folded), ``b<N>_before/after``."""
    result = {}
    for label, source in (("before", baseline), ("after", model)):
        deployed = make_permanent(copy.deepcopy(source).cpu())
        for batch in batch_sizes:
            result[f"b{batch}_{label}"] = measure_latency(deployed, input_shape, batch, repeats=30, device="cpu")
    return result


def size_summary(chosen: nn.Module, baseline: nn.Module, targets: tuple[str, ...],
                 shape: tuple[int, ...] | None, physical: bool) -> dict:
    """Parameters, compression, MACs, bytes, per-layer rows, latency (and channels when pruned physically)."""
    params_baseline, nonzero = count_params(baseline), count_params(chosen, nonzero=True)
    summary: dict[str, Any] = {
        "params": {"baseline": params_baseline, "total": count_params(chosen), "nonzero": nonzero},
        "compression": params_baseline / max(nonzero, 1),
        "macs": {"baseline": count_macs(baseline, shape) if shape else None,
                 "dense": count_macs(chosen, shape) if shape else None,
                 "nonzero": count_macs(chosen, shape, nonzero=True) if shape else None},
        "bytes": {"baseline": 4 * params_baseline},
        "layers": layer_rows(chosen, baseline, targets, shape), "masks": len(masks_of(chosen)),
        "latency": latency_pair(baseline, chosen, shape) if shape else {},
    }
    if physical:
        summary["channels"] = channel_counts(chosen, baseline, targets)
        if shape:
            summary["unfollowed"] = unfollowed_rows(baseline, shape)
    return summary


def unfollowed_rows(model: nn.Module, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """``results.json``'s ``unfollowed``: ops the structured analysis keeps channels at (op, path, channels)."""
    from secateur.structured.graph import unfollowed_ops  # structured pruning imports this module's row

    x = zero_input(model, shape)
    return [{"op": u.op, "path": u.path, "channels": u.channels} for u in unfollowed_ops(model, x)]
