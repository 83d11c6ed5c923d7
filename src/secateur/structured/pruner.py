"""Structured pruning in rounds: the drop-bound search's pruner for neurons and channels.

The search (:mod:`secateur.search.bracket`) raises one scalar *strength* x >= 0 round by round. For
structured pruning x means "remove a fraction 1 - 2^-x of every prunable group's channels",
always counted against the *original* architecture: the model a round prunes is already
smaller (surgery happened in earlier rounds), so each round removes only the difference, and
channels removed once never come back (the structured form of "masks only grow").

Each round re-analyses the current model, ranks its channels with a method of
:data:`~secateur.structured.importance.GROUP_METHODS` and cuts; the surgery composes the
round's plan with the one the model carries, so the chosen model is always described by one
plan over the original model (what :func:`secateur.io.storage.load_model` re-applies).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from secateur.analysis.metrics import zero_input
from secateur.errors import ConfigError
from secateur.search.config import PruneConfig, check_learned
from secateur.search.pruner import (
    LEARNED,
    SCOPES,
    Context,
    Granularity,
    Learned,
    PrunerState,
    learn_phase,
    register,
    removed_fraction,
    start_from,
    strength_generator,
)
from secateur.structured.attention import ATTENTION_UNITS
from secateur.structured.graph import DependencyGraph, Group, analyse
from secateur.structured.importance import GROUP_METHODS
from secateur.structured.plan import build_plan, check_counts, global_counts, n_keep, top_channels
from secateur.structured.surgery import apply_plan


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (cpu for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def example_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A zero batch of one example on the model's device (for tracing; token ids for a text model)."""
    return zero_input(model, input_shape, 1, model_device(model))


def group_sizes(model: nn.Module, input_shape: tuple[int, ...], ignore: Iterable[str] = (),
                attention: str = "heads") -> dict[str, int]:
    """Prunable channels per coupled group of ``model`` (group name = its first producing layer)."""
    x = example_input(model, input_shape)
    return {g.name: g.size for g in analyse(model, x, ignore=tuple(ignore), attention=attention).groups}


@dataclass(frozen=True)
class Counts:
    """What a scope needs to decide how many channels every current group keeps."""

    groups: list[Group]
    original: Mapping[str, int]  # group name -> channels in the unpruned model
    fraction: float  # of the original channels removed
    scores: Mapping[str, torch.Tensor]
    min_channels: int
    round_to: int



@SCOPES.register("local")
def _local(c: Counts) -> dict[str, int]:
    """The same fraction of every group's original channels (never more than it has now)."""
    return {g.name: min(g.size, n_keep(c.original.get(g.name, g.size), c.fraction, c.min_channels, c.round_to))
            for g in c.groups}


@SCOPES.register("global")
def _global(c: Counts) -> dict[str, int]:
    """One ranking across groups, removing the fraction of all original channels."""
    original = sum(c.original.get(g.name, g.size) for g in c.groups)
    current = sum(g.size for g in c.groups)
    remove = math.floor(original * c.fraction + 1e-9) - (original - current)
    if remove <= 0:
        return {g.name: g.size for g in c.groups}
    return global_counts(c.groups, c.scores, remove / current, c.min_channels, c.round_to)


@dataclass(frozen=True)
class ChannelPruner:
    """Removes channels physically so every group keeps its share of the *original* size.

    The model carries its plan over the original architecture (recorded by the surgery), so
    its checkpoint rebuilds it (:func:`secateur.io.storage.load_model`).
    """

    method: str
    input_shape: tuple[int, ...]  # one example, e.g. (1, 28, 28)
    original: Mapping[str, int]  # group name -> channels in the unpruned model
    scope: str = "local"
    ignore: tuple[str, ...] = ()
    min_channels: int = 1
    round_to: int = 1
    seed: int = 0
    batches: Callable[[], Iterable] | None = None  # (inputs, targets) batches for methods that need them
    targets: tuple[str, ...] = ()  # weight tensors reported per layer
    state_keys: tuple[str, ...] = ()  # the plan lives on the model (secateur.provenance); learned: its flag
    learned: Learned | None = None  # a method's training phase (its weights start the first cut)
    attention: str = "heads"  # what one channel of an attention layer is (ATTENTION_UNITS)

    def levels(self, strength: float) -> float:
        """The fraction of channels removed at ``strength``."""
        return removed_fraction(strength)

    @torch.no_grad()
    def prune(self, model: nn.Module, strength: float, state: PrunerState) -> PrunerState:
        """Shrink ``model`` in place to ``strength``.

        The surgery records on the model its plan over the original architecture (composed
        with any it carried), which its checkpoint stores; the JSON state stays as given (but for
        a learned method, whose first cut starts from its learned weights: the state records it).
        """
        state = start_from(model, self.learned, state)
        x = example_input(model, self.input_shape)
        graph = analyse(model, x, ignore=self.ignore, attention=self.attention)
        scores = self._scores(model, graph, strength)
        counts = SCOPES.get(self.scope)(Counts(graph.groups, self.original, removed_fraction(strength), scores,
                                               self.min_channels, self.round_to))
        if any(counts[g.name] < g.size for g in graph.groups):
            cut = build_plan(graph, {g.name: top_channels(scores[g.name], counts[g.name]) for g in graph.groups})
            apply_plan(model, cut, x)
        return dict(state)

    def _scores(self, model: nn.Module, graph: DependencyGraph, strength: float) -> dict[str, torch.Tensor]:
        device = model_device(model)
        batches = [(x.to(device), y.to(device)) for x, y in self.batches()] if self.batches is not None else None
        with torch.enable_grad():
            return GROUP_METHODS.get(self.method)(model, graph, batches=batches, learned=self.learned,
                                                  generator=strength_generator(self.seed, strength))


def _conv_paths(model: nn.Module) -> tuple[str, ...]:
    """Module paths of every conv (kept whole when only neurons are pruned)."""
    return tuple(name for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd))


def _check(config: PruneConfig) -> None:
    SCOPES.get(config.scope)
    method = GROUP_METHODS.get(str(config.method))
    check_learned(method.name, method.learn, config)
    check_counts(config.min_channels, config.round_to)
    ATTENTION_UNITS.get(config.attention)


def _builder(keep_whole: Callable[[nn.Module], tuple[str, ...]]) -> Callable[..., tuple[ChannelPruner, PruneConfig]]:
    """The build function of a physical granularity that also keeps ``keep_whole(model)`` whole."""

    def build(baseline: nn.Module, config: PruneConfig, context: Context) -> tuple[ChannelPruner, PruneConfig]:
        if context.input_shape is None:
            raise ConfigError(f"{config.granularity} pruning traces the model: pass input_shape= "
                              "(one example, e.g. (1, 28, 28))")
        method = GROUP_METHODS.get(str(config.method))
        if "batches" in method.needs and context.batches is None:
            raise ConfigError(f"method {method.name!r} needs training batches: pass data= (a dataset or its name)")
        ignore = tuple(config.ignore or ()) + keep_whole(baseline)
        original = group_sizes(baseline, context.input_shape, ignore, config.attention)
        if not original:
            raise ConfigError(f"the model has no prunable {config.granularity}s (the output layer is never pruned; "
                              "check ignore=)")
        learned = learn_phase(method.name, method.learn, baseline, context.targets, context,
                              input_shape=tuple(context.input_shape), ignore=ignore, attention=config.attention)
        pruner = ChannelPruner(method.name, tuple(context.input_shape), original, config.scope, ignore,
                               config.min_channels, config.round_to, config.seed, context.batches,
                               context.targets, (LEARNED,) if learned is not None else (), learned,
                               config.attention)
        return pruner, config

    return build


STRUCTURED_OPTIONS = frozenset({"scope", "min_channels", "round_to", "ignore", "learn_epochs", "learn_penalty",
                                "attention"})


def _copy(model: nn.Module, targets: tuple[str, ...]) -> nn.Module:
    return copy.deepcopy(model)


register(Granularity(
    name="neuron", doc="Linear outputs, removed physically (a smaller dense model)", methods=GROUP_METHODS,
    default_method="l1", start=1.0, options=STRUCTURED_OPTIONS, physical=True, continuous=False,
    prepare=_copy, build=_builder(_conv_paths), check=_check))
register(Granularity(
    name="channel", doc="conv filters and Linear neurons, removed physically", methods=GROUP_METHODS,
    default_method="l1", start=1.0, options=STRUCTURED_OPTIONS, physical=True, continuous=False,
    prepare=_copy, build=_builder(lambda model: ()), check=_check))
