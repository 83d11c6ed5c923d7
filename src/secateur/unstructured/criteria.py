"""Unstructured pruning criteria: which individual weights to zero at a given pruning level.

A criterion maps the current (effective, already-masked) weights of the pruned layers and a
*level* to boolean keep-masks. Levels are criterion-specific and grow with pruning strength:

- ``han`` (Han et al. 2015): level = quality parameter q; in each layer the weights with
  ``|w| < q * std`` are zeroed. The std is that of the layer's **original dense weights**
  (recorded once, before any pruning), not of the survivors in each round. Han's paper
  leaves this open and Distiller recomputes it each round; a fixed reference makes q an
  absolute threshold, so the same q always means the same cut, higher q always prunes at
  least as much, and the drop-bound search can bisect q between two rounds meaningfully.
  With a per-round std the same q would cut deeper every round (the std of survivors grows
  as small weights vanish), so q would not name a model.
- ``magnitude``: level = sparsity s in [0, 1); the smallest-|w| fraction s of every layer.
- ``global-magnitude``: level = sparsity s; one |w| threshold across all layers.
- ``random``: level = sparsity s; a random fraction s of every layer (the baseline).

Already-zero weights count as pruned, so combining a criterion's mask with the existing one
(``secateur.unstructured.masks.apply_masks`` takes the logical AND) only ever grows the pruned set.
Per-layer levels: ``level`` may be a number or a mapping ``{layer_name: level}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from secateur.errors import ConfigError
from secateur.registry import Registry

Level = float | Mapping[str, float]
Masks = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """A pruning rule plus how its level relates to pruning strength.

    ``strength_to_level`` maps the search's strength x >= 0 to this criterion's level. For
    every criterion x is "halvings of the weights": x = 1 removes about half of a layer,
    x = 3.6 about 92% (12x), so one search and its step sizes serve every criterion.
    """

    name: str
    select: Callable[..., Masks]
    strength_to_level: Callable[[float], float]
    doc: str


CRITERIA: Registry[Criterion] = Registry("pruning method")


def _level_for(level: Level, name: str) -> float:
    if isinstance(level, Mapping):
        if name not in level:
            raise ConfigError(f"no pruning level given for layer {name!r}; give one for every pruned layer")
        return float(level[name])
    return float(level)


def _check_sparsity(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {value}")
    return value


def han_masks(weights: Mapping[str, torch.Tensor], level: Level, *,
              reference_std: Mapping[str, float] | None = None, **_: object) -> Masks:
    """Keep ``|w| >= q * std`` per layer; std from ``reference_std`` (dense) or the weights."""
    masks = {}
    for name, w in weights.items():
        q = _level_for(level, name)
        if q < 0:
            raise ConfigError(f"han quality parameter must be >= 0, got {q}")
        std = reference_std[name] if reference_std is not None else float(w.float().std())
        masks[name] = (w.abs() >= q * std) & (w != 0)
    return masks


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask keeping the ``1 - sparsity`` fraction of entries with the largest score."""
    n_prune = int(round(_check_sparsity(sparsity) * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        keep[torch.topk(scores.flatten(), n_prune, largest=False, sorted=False).indices] = False
    return keep.view_as(scores)


def magnitude_masks(weights: Mapping[str, torch.Tensor], level: Level, **_: object) -> Masks:
    """The same fraction of smallest-magnitude weights in every layer."""
    return {name: _keep_largest(w.abs(), _level_for(level, name)) & (w != 0) for name, w in weights.items()}


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], level: Level, **_: object) -> Masks:
    """One magnitude threshold across all layers; per-layer levels are not meaningful here."""
    if isinstance(level, Mapping):
        raise ConfigError("global-magnitude takes one sparsity for the whole model, not one per layer")
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    keep = _keep_largest(flat, float(level))
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset:offset + w.numel()].view_as(w) & (w != 0)
        offset += w.numel()
    return masks


def random_masks(weights: Mapping[str, torch.Tensor], level: Level, *,
                 generator: torch.Generator | None = None, **_: object) -> Masks:
    """A random fraction of each layer; already-zero weights are counted as pruned first."""
    masks = {}
    for name, w in weights.items():
        scores = torch.rand(w.shape, generator=generator).to(w.device) + 1.0
        scores[w == 0] = 0.0  # already pruned: pruned first, so masks only grow
        masks[name] = _keep_largest(scores, _level_for(level, name)) & (w != 0)
    return masks


def _q_from_strength(x: float) -> float:
    """The q that prunes a fraction ``1 - 2**-x`` of a Gaussian layer (x = 1 -> q = 0.674).

    Han's q then moves on the same scale of pruning strength as the sparsity criteria, so
    one search step means about the same cut for every method.
    """
    sparsity = _sparsity_from_strength(x)
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(sparsity, dtype=torch.float64)))


def _sparsity_from_strength(x: float) -> float:
    """Strength x halves the surviving weights x times: 1 -> 50%, 2 -> 75%, 3 -> 87.5%."""
    return 1.0 - 2.0 ** (-max(x, 0.0))


def _register() -> None:
    entries = [
        Criterion("han", han_masks, _q_from_strength,
                  "Han et al. 2015: per layer, zero |w| < q x std of the layer's dense weights"),
        Criterion("magnitude", magnitude_masks, _sparsity_from_strength,
                  "the same fraction of smallest-|w| weights in every layer"),
        Criterion("global-magnitude", global_magnitude_masks, _sparsity_from_strength,
                  "one |w| threshold across all layers"),
        Criterion("random", random_masks, _sparsity_from_strength,
                  "random weights (the baseline every method must beat)"),
    ]
    for entry in entries:
        CRITERIA.add(entry.name, entry, entry.doc)


_register()


def select_masks(method: str, weights: Mapping[str, torch.Tensor], level: Level, **context: object) -> Masks:
    """Keep-masks from the criterion registered as ``method`` (the API/CLI entry point)."""
    return CRITERIA.get(method).select(weights, level, **context)
