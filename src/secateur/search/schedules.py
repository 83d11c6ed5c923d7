"""Pruning schedules: how one search round takes a model to a new pruning strength.

- ``oneshot``: every round starts again from the dense baseline, prunes straight to the
  round's strength, then retrains.
- ``iterative`` (Han et al.): every round starts from the last accepted model, prunes
  further (masks only grow), then retrains; the surviving weights keep their values.
- ``gradual`` (Zhu & Gupta 2017): every round starts from the last accepted model and raises
  the strength along a cubic ramp *while* retraining (pruning every few optimiser steps over
  the first 3/4 of the round), so the network adapts continuously; the last quarter only
  fine-tunes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.registry import Registry
from secateur.unstructured.criteria import Criterion
from secateur.unstructured.masks import apply_masks, effective


@dataclass(frozen=True)
class Pruner:
    """Applies a criterion at a given strength to the chosen tensors of a model."""

    criterion: Criterion
    targets: tuple[str, ...]
    factors: Mapping[str, float] = field(default_factory=dict)
    reference_std: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0

    def levels(self, strength: float) -> float | dict[str, float]:
        """The criterion's level per target (one level for global criteria)."""
        if self.criterion.name == "global-magnitude":
            return self.criterion.strength_to_level(strength)
        return {n: self.criterion.strength_to_level(strength * self.factors.get(n, 1.0)) for n in self.targets}

    @torch.no_grad()
    def prune(self, model: nn.Module, strength: float) -> None:
        """Zero the weights the criterion selects at ``strength`` (masks only grow)."""
        weights = {name: effective(model, name).detach() for name in self.targets}
        generator = torch.Generator().manual_seed(self.seed + int(strength * 1e6))
        masks = self.criterion.select(weights, self.levels(strength),
                                      reference_std=self.reference_std or None, generator=generator)
        apply_masks(model, masks)


Retrain = Callable[[nn.Module], None]


@dataclass(frozen=True)
class Schedule:
    """A schedule: whether rounds restart from the baseline, and how a round runs."""

    name: str
    restart_from_baseline: bool
    run: Callable[[nn.Module, float, float, Pruner, Retrain, int | None], None]
    doc: str


def _prune_then_retrain(model: nn.Module, start: float, target: float, pruner: Pruner,
                        retrain: Retrain, steps: int | None) -> None:
    pruner.prune(model, target)
    retrain(model)


def cubic_strength(start: float, target: float, step: int, ramp_steps: int) -> float:
    """Zhu & Gupta's cubic ramp from ``start`` to ``target`` over ``ramp_steps`` steps."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return target
    return target + (start - target) * (1.0 - step / ramp_steps) ** 3


def _gradual(model: nn.Module, start: float, target: float, pruner: Pruner,
             retrain: Retrain, steps: int | None) -> None:
    """Prune along the cubic ramp from a forward pre-hook, so any training loop works."""
    if not steps:
        raise ConfigError("the gradual schedule needs the number of optimiser steps per round "
                          "(steps_per_round) when a custom train function is used")
    ramp = max(1, (3 * steps) // 4)
    every = max(1, ramp // 10)
    counter = {"step": 0}

    def hook(module: nn.Module, args: object) -> None:
        if not module.training:
            return
        step = counter["step"]
        if (step % every == 0 and step < ramp) or step == ramp:
            pruner.prune(module, cubic_strength(start, target, step, ramp))
        counter["step"] += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        retrain(model)
    finally:
        handle.remove()
    pruner.prune(model, target)  # a no-op unless the loop ran fewer steps than announced


SCHEDULES: Registry[Schedule] = Registry("schedule")
for _schedule in (
    Schedule("oneshot", True, _prune_then_retrain, "prune once from the dense baseline, then retrain"),
    Schedule("iterative", False, _prune_then_retrain, "Han et al.: prune further, retrain, repeat"),
    Schedule("gradual", False, _gradual, "Zhu & Gupta: cubic sparsity ramp during retraining"),
):
    SCHEDULES.add(_schedule.name, _schedule, _schedule.doc)
