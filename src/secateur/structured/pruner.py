"""Structured pruning in rounds: the drop-bound search's pruner for neurons and channels.

The search (:mod:`secateur.search.bracket`) raises one scalar *strength* x >= 0 round by round. For
structured pruning x means "remove a fraction 1 - 2^-x of every prunable group's channels",
always counted against the *original* architecture: the model a round prunes is already
smaller (surgery happened in earlier rounds), so each round removes only the difference, and
channels removed once never come back (the structured form of "masks only grow").

Each round re-analyses the current model, ranks its channels with a group criterion
(``l1``, ``l2``, ``bn-scale``, ``taylor``, ``random``), cuts, and composes the round's plan with
the plan so far, so the chosen model is always described by one plan over the original model
(what :func:`secateur.io.storage.load_model` re-applies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.structured.graph import DependencyGraph, analyse
from secateur.structured.importance import GROUP_CRITERIA
from secateur.structured.plan import (
    Plan,
    build_plan,
    compose,
    global_counts,
    n_keep,
    top_channels,
)
from secateur.structured.surgery import apply_plan

GRANULARITIES = ("neuron", "channel")


def removed_fraction(strength: float) -> float:
    """Fraction of channels removed at ``strength`` (x = 1: half, x = 2: three quarters)."""
    return 1.0 - 2.0 ** (-max(strength, 0.0))


def granularity_ignore(model: nn.Module, granularity: str) -> tuple[str, ...]:
    """Module paths kept whole at ``granularity``: ``neuron`` prunes Linear outputs only."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}; choose one of: weight, {', '.join(GRANULARITIES)}")
    if granularity == "channel":
        return ()
    return tuple(name for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd))


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (cpu for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def example_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A zero batch of one example on the model's device (for tracing)."""
    return torch.zeros(1, *input_shape, device=model_device(model))


def group_sizes(model: nn.Module, input_shape: tuple[int, ...], ignore: Iterable[str] = ()) -> dict[str, int]:
    """Prunable channels per coupled group of ``model`` (group name = its first producing layer)."""
    return {g.name: g.size for g in analyse(model, example_input(model, input_shape), ignore=tuple(ignore)).groups}


@dataclass(frozen=True)
class ChannelPruner:
    """Removes channels physically so every group keeps its share of the *original* size."""

    criterion: str
    input_shape: tuple[int, ...]  # one example, e.g. (1, 28, 28)
    original: Mapping[str, int]  # group name -> channels in the unpruned model
    scope: str = "local"  # local: same fraction per group; global: one ranking across groups
    ignore: tuple[str, ...] = ()
    min_channels: int = 1
    round_to: int = 1
    seed: int = 0
    batches: Callable[[], Iterable] | None = None  # (inputs, targets) batches for the taylor criterion
    targets: tuple[str, ...] = ()  # weight tensors reported per layer

    def levels(self, strength: float) -> float:
        """The fraction of channels removed at ``strength``."""
        return removed_fraction(strength)

    @torch.no_grad()
    def prune(self, model: nn.Module, strength: float, plan: Plan) -> Plan:
        """Shrink ``model`` in place to ``strength``; returns ``plan`` composed with this round's cut."""
        x = example_input(model, self.input_shape)
        graph = analyse(model, x, ignore=self.ignore)
        scores = self._scores(model, graph, strength)
        counts = self._counts(graph, removed_fraction(strength), scores)
        if all(counts[g.name] >= g.size for g in graph.groups):
            return plan
        cut = build_plan(graph, {g.name: top_channels(scores[g.name], counts[g.name]) for g in graph.groups})
        apply_plan(model, cut, x)
        return compose(plan, cut)

    def _scores(self, model: nn.Module, graph: DependencyGraph, strength: float) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + int(strength * 1e6))
        device = model_device(model)
        batches = [(x.to(device), y.to(device)) for x, y in self.batches()] if self.batches is not None else None
        with torch.enable_grad():
            return GROUP_CRITERIA.get(self.criterion)(model, graph, batches=batches, generator=generator)

    def _counts(self, graph: DependencyGraph, fraction: float, scores: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Channels each current group keeps (never more than it has now)."""
        def goal(name: str, size: int) -> int:
            return min(size, n_keep(self.original.get(name, size), fraction, self.min_channels, self.round_to))

        if self.scope == "local":
            return {g.name: goal(g.name, g.size) for g in graph.groups}
        original = sum(self.original.get(g.name, g.size) for g in graph.groups)
        current = sum(g.size for g in graph.groups)
        remove = math.floor(original * fraction + 1e-9) - (original - current)
        if remove <= 0:
            return {g.name: g.size for g in graph.groups}
        return global_counts(graph.groups, scores, remove / current, self.min_channels, self.round_to)
