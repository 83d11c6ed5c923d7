"""The contract between the drop-bound search and every way of pruning.

The search (:mod:`secateur.search.orchestrator`) knows one scalar, the *strength* x >= 0
(0 = the dense model; x = 1 removes about half of what can be removed, x = 2 three
quarters). A :class:`Pruner` says what a strength means for its granularity and prunes a
model to it; its state between rounds is plain JSON (:data:`PrunerState`) that goes into the
round's checkpoint header, so ``--resume`` restores it. A :class:`Granularity` says how to
build a pruner for a model and which options and methods it takes; granularities register
in :data:`GRANULARITIES` (``weight``, ``kernel``, ``n:m`` in
:mod:`secateur.unstructured.granularities`; ``neuron``, ``channel`` in
:mod:`secateur.structured.pruner`). Nothing else in the search looks at a name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.registry import Registry

if TYPE_CHECKING:  # annotations only: search.config imports this module (a cycle at run time)
    from secateur.search.config import PruneConfig

PrunerState = dict[str, Any]  # JSON: e.g. {"plan": ...} for physical pruning, {} for masks
Retrain = Callable[[nn.Module], None]  # retrains a model in place (one round's training)
Evaluate = Callable[[nn.Module], "float | torch.Tensor"]  # accuracy, or per-example correctness (bool)
Level = float | dict[str, float]  # what a strength means: one level, or one per layer


def removed_fraction(strength: float) -> float:
    """Fraction removed at ``strength``: x halvings of what survives (1 -> 1/2, 2 -> 3/4, 3 -> 7/8)."""
    return 1.0 - 2.0 ** (-max(strength, 0.0))


def strength_seed(seed: int, strength: float) -> int:
    """The random seed of a cut at ``strength`` (random methods give the same cut on resume)."""
    return seed + int(strength * 1e6)


def strength_generator(seed: int, strength: float) -> torch.Generator:
    """A CPU generator seeded by :func:`strength_seed`."""
    return torch.Generator().manual_seed(strength_seed(seed, strength))


class Pruner(Protocol):
    """Prunes a model to a strength; what the search alone knows of a granularity."""

    @property
    def targets(self) -> tuple[str, ...]:
        """The weight tensors reported per layer."""
        ...

    @property
    def state_keys(self) -> tuple[str, ...]:
        """The keys its JSON state takes in a checkpoint header (empty: the state lives in the model)."""
        ...

    def levels(self, strength: float) -> Level:
        """What ``strength`` means for this pruner (recorded in every history row)."""
        ...

    def prune(self, model: nn.Module, strength: float, state: PrunerState) -> PrunerState:
        """Prune ``model`` in place to ``strength`` from ``state``; return the new state.

        Pruning only grows: what an earlier call removed stays removed.
        """
        ...


LEARNED = "learned"  # pruner-state key: the method's learned weights are already in the model
Step = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, x, y) -> loss


@dataclass(frozen=True)
class Trainer:
    """secateur's training loop on the run's data, for methods with a training phase of their own.

    ``fit(model, step, changes)`` trains ``model`` in place for ``epochs`` with the loss
    ``step(model, x, y)`` and the baseline recipe with ``changes`` (TrainConfig fields, e.g. the
    optimizer); ``examples`` is the size of the training split (a per-example penalty's scale),
    ``steps_per_epoch(batch_size)`` the optimiser steps of one epoch at a batch size (for ramps over
    the phase; your own DataLoader keeps its batches whatever the size); ``penalty`` multiplies the
    method's sparsity penalty (``learn_penalty``).
    """

    fit: Callable[[nn.Module, Step, dict[str, Any]], None]
    examples: int
    epochs: int
    steps_per_epoch: Callable[[int], int]
    penalty: float = 1.0
    seed: int = 0  # the phase's seed (with the rest, what a kept phase is matched on)
    data: str = ""  # what the phase trains on: the dataset's name and the baseline recipe (matched too)


@dataclass(frozen=True)
class Learned:
    """What a method's training phase produced, from the baseline's architecture.

    ``weights``: tensors by qualified name (``fc1.weight``) that rounds start from;
    ``scores``: per target (or per group) importance, higher = keep; ``info``: what to report.
    """

    weights: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    info: dict[str, Any]


def set_tensor(model: nn.Module, qualified: str, value: torch.Tensor) -> None:
    """Write ``value`` into a parameter or buffer of ``model`` (under a mask: its unmasked original)."""
    path, _, leaf = qualified.rpartition(".")
    module = model.get_submodule(path)
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and leaf in parametrizations:
        target = parametrizations[leaf].original
    else:
        target = getattr(module, leaf)
    with torch.no_grad():
        target.copy_(value.to(target.device, target.dtype))


def start_from(model: nn.Module, learned: Learned | None, state: PrunerState) -> PrunerState:
    """Load the learned weights into ``model`` once (the first cut from the baseline); the state records it.

    Rounds that restart from the baseline start again with empty state, so they load them again;
    rounds that continue from an accepted model keep that model's (retrained) weights.
    """
    if learned is None or state.get(LEARNED):
        return dict(state)
    for name, value in learned.weights.items():
        set_tensor(model, name, value)
    return {**state, LEARNED: True}


def learn_phase(method: str, learn: Callable[..., Learned] | None, baseline: nn.Module, targets: tuple[str, ...],
                context: Context, **extra: Any) -> Learned | None:
    """Run a learned method's training phase on a copy of ``baseline`` (None for other methods).

    With a run folder the phase is kept there (``state/learned.*``) and a resumed run reads it back
    instead of training it again, when it was learned with the same method, epochs, penalty,
    targets, data, recipe and baseline.
    """
    if learn is None:
        return None
    if context.trainer is None:
        raise ConfigError(f"method {method!r} trains the model itself before the search: pass data= (a dataset "
                          "or its name); with your own train= / evaluate= callables or a PruningSession it cannot run")
    from secateur.distributed import is_writer
    from secateur.io import rundir  # the run folder's files (rundir imports the search's settings)

    if context.out is None:  # nowhere to keep it
        return learn(baseline, targets, context.trainer, **extra)
    key = {"method": method, "epochs": context.trainer.epochs, "penalty": context.trainer.penalty,
           "seed": context.trainer.seed, "examples": context.trainer.examples, "data": context.trainer.data,
           "targets": list(targets), "extra": {k: repr(v) for k, v in sorted(extra.items())},
           "baseline": rundir.weights_sha256(baseline)}
    kept = rundir.load_learned(context.out, key)
    if kept is not None:
        return Learned(*kept)
    learned = learn(baseline, targets, context.trainer, **extra)
    if is_writer():  # under torchrun: rank 0 writes
        rundir.save_learned(context.out, key, learned.weights, learned.scores, learned.info)
    return learned


@dataclass(frozen=True)
class Context:
    """What a granularity may use to build its pruner (each piece but ``targets`` may be absent)."""

    targets: tuple[str, ...]  # the tensors to prune (default: every Linear / Conv weight)
    input_shape: tuple[int, ...] | None
    evaluate: Evaluate
    batches: Callable[[], Iterable] | None  # a few (inputs, targets) training batches
    out: Path | None  # the run folder, for analyses worth keeping (e.g. sensitivity.json)
    trainer: Trainer | None = None  # training on the run's data (methods with a training phase)


@dataclass(frozen=True)
class Granularity:
    """One way of pruning under the search: its methods, options and pruner.

    - ``methods``: the registry of methods it takes (``method=`` names);
    - ``default_method``: the method when none is given;
    - ``start``: the default first strength (chosen so the first round is about 4x);
    - ``options``: :class:`~secateur.search.config.PruneConfig` fields that only this
      granularity (among others) reads; the others reject a non-default value;
    - ``physical``: whether the architecture shrinks (a smaller dense model) or masks zero it;
    - ``continuous``: whether its pruner may run inside a training loop (``gradual``);
    - ``prepare(model, targets)``: the baseline copy the rounds start from;
    - ``build(baseline, config, context)``: the pruner, and the config with any options it
      resolved (e.g. per-layer factors), so ``config.yaml`` records what ran;
    - ``check(config)``: extra validation, raising ConfigError.
    """

    name: str
    doc: str
    methods: Registry[Any]
    default_method: str
    start: float
    options: frozenset[str]
    physical: bool
    continuous: bool
    prepare: Callable[[nn.Module, tuple[str, ...]], nn.Module]
    build: Callable[[nn.Module, PruneConfig, Context], tuple[Pruner, PruneConfig]]
    check: Callable[[PruneConfig], None] | None = None


GRANULARITIES: Registry[Granularity] = Registry(
    "granularity", builtins=("secateur.unstructured.granularities", "secateur.structured.pruner"))


ALLOCATIONS: Registry[Any] = Registry("allocation", builtins=("secateur.unstructured.granularities",))
SCOPES: Registry[Any] = Registry("scope", builtins=("secateur.structured.pruner",))


def method_names() -> list[str]:
    """Every method some granularity takes (the CLI's and the recipe's ``method`` choices)."""
    return sorted({name for g in GRANULARITIES.names() for name in GRANULARITIES.get(g).methods.names()})


def register(granularity: Granularity) -> Granularity:
    """Add ``granularity`` to :data:`GRANULARITIES` under its name."""
    GRANULARITIES.add(granularity.name, granularity, granularity.doc)
    return granularity


def option_owners() -> dict[str, list[str]]:
    """Option name -> the granularities that read it (for one-line errors)."""
    owners: dict[str, list[str]] = {}
    for name in GRANULARITIES.names():
        for option in GRANULARITIES.get(name).options:
            owners.setdefault(option, []).append(name)
    return owners

