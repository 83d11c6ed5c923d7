"""Pruners that zero weights with masks: single weights, whole conv kernels, N:M patterns.

Each implements :class:`secateur.search.pruner.Pruner`: a strength means "halvings" of what
the granularity can remove, masks only grow, and the state between rounds lives in the
model's masks, so the JSON pruner state stays empty.

- :class:`WeightPruner` applies a weight method (``han``, ``magnitude``, ...) to every target
  tensor, with optional per-layer strength factors.
- :class:`KernelPruner` applies the same weight methods to the L1 norms of each conv's 2-D
  kernels ``weight[o, i, :, :]`` and zeroes whole kernels.
- :class:`NMPruner` makes whole layers N:M sparse (in every run of ``m`` consecutive inputs
  of a row only ``n`` survive, the pattern sparse tensor cores run): strength x puts a
  fraction ``1 - 2^-x`` of the eligible parameters under the pattern, layers taken in the
  order that loses the least weight mass (measured once on the dense weights). The search
  then finds which layers can be N:M within the bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from secateur.search.pruner import Learned, Level, PrunerState, removed_fraction, start_from, strength_generator
from secateur.unstructured.masks import apply_masks, effective
from secateur.unstructured.methods import WeightMethod

Masks = dict[str, torch.Tensor]


def reference_stds(model: nn.Module, targets: tuple[str, ...]) -> dict[str, float]:
    """Each target's dense std (han's fixed reference, recorded before any pruning)."""
    return {name: float(effective(model, name).detach().float().std()) for name in targets}


def _context(method: WeightMethod, reference_std: Mapping[str, float], seed: int, strength: float,
             learned: Learned | None = None) -> dict:
    """The keyword arguments ``method`` declared it needs."""
    available = {"reference_std": dict(reference_std) or None, "generator": strength_generator(seed, strength),
                 "learned": learned}
    return {need: available[need] for need in method.needs}


@dataclass(frozen=True)
class WeightPruner:
    """Applies a weight method at a given strength to the chosen tensors of a model."""

    method: WeightMethod
    targets: tuple[str, ...]
    factors: Mapping[str, float] = field(default_factory=dict)
    reference_std: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    state_keys: tuple[str, ...] = ()  # masks live in the model; a learned method: whether its weights are in
    learned: Learned | None = None  # a method's training phase (its weights start the first cut)

    def levels(self, strength: float) -> Level:
        """The method's level per target (one level for global methods)."""
        if self.method.scope == "global":
            return self.method.strength_to_level(strength)
        return {n: self.method.strength_to_level(strength * self.factors.get(n, 1.0)) for n in self.targets}

    @torch.no_grad()
    def prune(self, model: nn.Module, strength: float, state: PrunerState | None = None) -> PrunerState:
        """Zero the weights the method selects at ``strength`` (masks only grow).

        A learned method's first cut starts from the weights its training phase learned.
        """
        state = start_from(model, self.learned, dict(state or {}))
        weights = {name: effective(model, name).detach() for name in self.targets}
        masks = self.method.select(weights, self.levels(strength),
                                   **_context(self.method, self.reference_std, self.seed, strength, self.learned))
        apply_masks(model, masks)
        return state


def kernel_norms(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of every 2-D kernel of a conv weight ``[out, in, *k]`` -> ``[out, in]``."""
    return weight.abs().flatten(2).sum(2)


def kernel_targets(model: nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    """The targets that are conv weights with spatial kernels (at least 3-D)."""
    return tuple(name for name in targets if effective(model, name).dim() >= 3)


@dataclass(frozen=True)
class KernelPruner:
    """Zeroes whole conv kernels: a weight method applied to the kernels' L1 norms."""

    method: WeightMethod
    targets: tuple[str, ...]
    reference_std: Mapping[str, float] = field(default_factory=dict)  # of the dense kernel norms
    seed: int = 0
    state_keys: tuple[str, ...] = ()  # masks live in the model

    def levels(self, strength: float) -> Level:
        """The method's level (per layer, or one for global methods)."""
        if self.method.scope == "global":
            return self.method.strength_to_level(strength)
        return {n: self.method.strength_to_level(strength) for n in self.targets}

    @torch.no_grad()
    def prune(self, model: nn.Module, strength: float, state: PrunerState | None = None) -> PrunerState:
        """Zero the kernels the method selects at ``strength`` (kernels only ever go)."""
        weights = {name: effective(model, name).detach() for name in self.targets}
        norms = {name: kernel_norms(w) for name, w in weights.items()}
        keep = self.method.select(norms, self.levels(strength),
                                  **_context(self.method, self.reference_std, self.seed, strength))
        apply_masks(model, {name: keep[name].reshape(*keep[name].shape, *[1] * (w.dim() - 2)).expand_as(w)
                            for name, w in weights.items()})
        return dict(state or {})


def nm_rows(weight: torch.Tensor) -> torch.Tensor:
    """A weight as rows whose last axis runs over inputs (convs: ``[out, *k, in]``)."""
    return weight if weight.dim() == 2 else weight.movedim(1, -1)


def nm_keep(weight: torch.Tensor, scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the ``n`` highest scores in every run of ``m`` consecutive inputs."""
    rows = nm_rows(scores)
    groups = rows.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    keep = keep.reshape(rows.shape)
    return (keep if weight.dim() == 2 else keep.movedim(-1, 1)) & (weight != 0)


def nm_order(model: nn.Module, targets: tuple[str, ...], n: int, m: int) -> tuple[str, ...]:
    """Eligible targets (inputs a multiple of ``m``), least weight mass lost under N:M first."""
    loss = {}
    for name in targets:
        w = effective(model, name).detach()
        if w.dim() < 2 or nm_rows(w).shape[-1] % m:
            continue
        kept = w.abs()[nm_keep(w, w.abs(), n, m)].sum()
        loss[name] = 1.0 - float(kept / w.abs().sum().clamp_min(1e-12))
    return tuple(sorted(loss, key=lambda name: (loss[name], targets.index(name))))


@dataclass(frozen=True)
class NMPruner:
    """Puts whole layers under the N:M pattern, in a fixed order, until a share of parameters is."""

    method: WeightMethod  # its ``score`` ranks the weights inside each group of ``m``
    n: int
    m: int
    targets: tuple[str, ...]  # in conversion order
    sizes: Mapping[str, int] = field(default_factory=dict)
    seed: int = 0
    state_keys: tuple[str, ...] = ()  # masks live in the model

    def levels(self, strength: float) -> Level:
        """The share of the eligible parameters put under N:M at ``strength``."""
        return removed_fraction(strength)

    def layers_at(self, strength: float) -> tuple[str, ...]:
        """The layers N:M sparse at ``strength``: a prefix of the order covering the share."""
        goal = removed_fraction(strength) * sum(self.sizes.values())
        chosen, covered = [], 0
        for name in self.targets:
            if covered >= goal - 1e-9:
                break
            chosen.append(name)
            covered += self.sizes[name]
        return tuple(chosen)

    @torch.no_grad()
    def prune(self, model: nn.Module, strength: float, state: PrunerState | None = None) -> PrunerState:
        """Apply the pattern to every layer the strength covers (layers already N:M stay so)."""
        generator = strength_generator(self.seed, strength)
        masks = {}
        for name in self.layers_at(strength):
            w = effective(model, name).detach()
            masks[name] = nm_keep(w, self.method.score(w, generator), self.n, self.m)
        apply_masks(model, masks)
        return dict(state or {})


def nm_sizes(model: nn.Module, targets: tuple[str, ...]) -> dict[str, int]:
    """Parameters of each target."""
    return {name: math.prod(effective(model, name).shape) for name in targets}
