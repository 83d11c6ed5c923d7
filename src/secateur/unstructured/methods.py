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
from secateur.search.pruner import Learned, removed_fraction

Level = float | Mapping[str, float]
Masks = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightMethod:
    """A rule for which single weights to zero, and what it needs (declared, never looked up by name).

    - ``select(weights, level, **needs)``: keep-masks (True = keep) for ``{name: weight}``;
    - ``strength_to_level``: the search's strength x >= 0 -> this method's level. For every
      method x means "halvings of the weights": x = 1 removes about half a layer, x = 3.6
      about 92% (12x), so one search and its step sizes serve every method;
    - ``scope``: ``"layer"`` (a level per layer, so per-layer factors apply) or ``"global"``
      (one level, one threshold across all layers);
    - ``needs``: context ``select`` takes: ``"reference_std"`` (each layer's dense std),
      ``"generator"`` (a seeded ``torch.Generator``);
    - ``allocation``: the per-layer allocation the search uses by default;
    - ``score(weight, generator)``: per-weight importance (higher = keep) for orderings
      inside small groups (the ``n:m`` granularity);
    - ``amount_to_level``: a fraction of the weights to remove -> this method's level, for
      :func:`secateur.prune_weights` (the fraction itself for the sparsity methods; han's q
      that removes it from a Gaussian layer);
    - ``learn(model, targets, trainer) -> Learned``: a training phase of the method's own (e.g.
      Sparse VD's variational training), run once on a copy of the baseline before the search;
      its weights are where the first cut starts, and ``select`` gets it as ``learned``.
    """

    name: str
    select: Callable[..., Masks]
    strength_to_level: Callable[[float], float]
    doc: str
    scope: str = "layer"
    needs: frozenset[str] = frozenset()
    allocation: str = "uniform"
    score: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] = lambda w, _g: w.abs()
    amount_to_level: Callable[[float], float] = float
    learn: Callable[..., Learned] | None = None


WEIGHT_METHODS: Registry[WeightMethod] = Registry("weight method", builtins=("secateur.unstructured.variational",))


def _sparsity_from_strength(x: float) -> float:
    """Strength x halves the surviving weights x times: 1 -> 50%, 2 -> 75%, 3 -> 87.5%."""
    return removed_fraction(x)


def weight_method(name: str, *, level: Callable[[float], float] = _sparsity_from_strength, scope: str = "layer",
                  needs: tuple[str, ...] = (), allocation: str = "uniform",
                  score: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
                  amount: Callable[[float], float] | None = None, learn: Callable[..., Learned] | None = None,
                  ) -> Callable[[Callable[..., Masks]], Callable[..., Masks]]:
    """Decorator: register a mask function as a weight method; its docstring's first line is its help."""

    def decorate(select: Callable[..., Masks]) -> Callable[..., Masks]:
        doc = (select.__doc__ or "").strip().splitlines()[0] if select.__doc__ else ""
        extra: dict[str, Callable] = {"score": score} if score is not None else {}
        if amount is not None:
            extra["amount_to_level"] = amount
        if learn is not None:
            extra["learn"] = learn
        WEIGHT_METHODS.add(name, WeightMethod(name, select, level, doc, scope, frozenset(needs), allocation, **extra),
                           doc)
        return select

    return decorate


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


def _q_from_strength(x: float) -> float:
    """The q that prunes a fraction ``1 - 2**-x`` of a Gaussian layer (x = 1 -> q = 0.674).

    Han's q then moves on the same scale of pruning strength as the sparsity methods, so
    one search step means about the same cut for every method.
    """
    return _q_from_amount(_sparsity_from_strength(x))


def _q_from_amount(sparsity: float) -> float:
    """The q for which ``|w| < q * std`` holds for a fraction ``sparsity`` of a Gaussian layer."""
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(sparsity, dtype=torch.float64)))


@weight_method("han", level=_q_from_strength, needs=("reference_std",), allocation="magnitude",
               amount=_q_from_amount)
def han_masks(weights: Mapping[str, torch.Tensor], level: Level, *,
              reference_std: Mapping[str, float] | None = None, **_: object) -> Masks:
    """Han et al. 2015: per layer, zero |w| < q x std of the layer's dense weights."""
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
    n_prune = round(_check_sparsity(sparsity) * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        keep[torch.topk(scores.flatten(), n_prune, largest=False, sorted=False).indices] = False
    return keep.view_as(scores)


@weight_method("magnitude")
def magnitude_masks(weights: Mapping[str, torch.Tensor], level: Level, **_: object) -> Masks:
    """The same fraction of smallest-|w| weights in every layer."""
    return {name: _keep_largest(w.abs(), _level_for(level, name)) & (w != 0) for name, w in weights.items()}


def keep_largest_globally(scores: Mapping[str, torch.Tensor], level: Level) -> Masks:
    """One threshold across all layers: keep the ``1 - level`` fraction of the largest scores."""
    if isinstance(level, Mapping):
        raise ConfigError("a global method takes one sparsity for the whole model, not one per layer")
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    keep = _keep_largest(flat, float(level))
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = keep[offset:offset + s.numel()].view_as(s)
        offset += s.numel()
    return masks


@weight_method("global-magnitude", scope="global")
def global_magnitude_masks(weights: Mapping[str, torch.Tensor], level: Level, **_: object) -> Masks:
    """One |w| threshold across all layers."""
    keep = keep_largest_globally({name: w.abs() for name, w in weights.items()}, level)
    return {name: keep[name] & (w != 0) for name, w in weights.items()}


def _random_scores(w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform scores in [1, 2), 0 where the weight is already zero (pruned first)."""
    scores = torch.rand(w.shape, generator=generator).to(w.device) + 1.0
    scores[w == 0] = 0.0
    return scores


@weight_method("random", needs=("generator",), score=_random_scores)
def random_masks(weights: Mapping[str, torch.Tensor], level: Level, *,
                 generator: torch.Generator | None = None, **_: object) -> Masks:
    """Random weights (the baseline every method must beat)."""
    return {name: _keep_largest(_random_scores(w, generator), _level_for(level, name)) & (w != 0)
            for name, w in weights.items()}


@weight_method("lamp", scope="global")
def lamp_masks(weights: Mapping[str, torch.Tensor], level: Level, **_: object) -> Masks:
    """Lee et al. 2021 (LAMP): one global threshold on layer-adaptive scores w^2 / (sum of w'^2 with |w'| >= |w|)."""
    scores = {}
    for name, w in weights.items():
        squares = w.detach().double().flatten().pow(2)
        order = torch.argsort(squares)
        # the denominator of each weight: the sum of its own and every larger square in the layer
        tails = squares[order].flip(0).cumsum(0).flip(0)
        score = torch.empty_like(squares)
        score[order] = squares[order] / tails.clamp_min(torch.finfo(torch.float64).tiny)
        scores[name] = score.view_as(w)
    keep = keep_largest_globally(scores, level)
    return {name: keep[name] & (w != 0) for name, w in weights.items()}


def select_masks(method: str, weights: Mapping[str, torch.Tensor], level: Level, **context: object) -> Masks:
    """Keep-masks from the weight method registered as ``method`` (the API/CLI entry point)."""
    return WEIGHT_METHODS.get(method).select(weights, level, **context)
