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

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from secateur.errors import ConfigError
from secateur.registry import Registry
from secateur.search.pruner import Pruner, PrunerState, Retrain

RunRound = Callable[[nn.Module, float, float, Pruner, Retrain, "int | None", PrunerState], PrunerState]


@dataclass(frozen=True)
class Schedule:
    """A schedule: whether rounds restart from the baseline, and how a round runs.

    ``run(model, start, target, pruner, retrain, steps, state)`` takes ``model`` from strength
    ``start`` (pruner state ``state``) to ``target`` and returns the new pruner state;
    ``continuous`` schedules prune inside the training loop, which only granularities that
    declare ``continuous`` support.
    """

    name: str
    restart_from_baseline: bool
    run: RunRound
    doc: str
    continuous: bool = False


SCHEDULES: Registry[Schedule] = Registry("schedule")


def schedule(name: str, doc: str, *, restart_from_baseline: bool = False,
             continuous: bool = False) -> Callable[[RunRound], RunRound]:
    """Decorator: register a round function as a schedule."""

    def decorate(run: RunRound) -> RunRound:
        SCHEDULES.add(name, Schedule(name, restart_from_baseline, run, doc, continuous), doc)
        return run

    return decorate


def _prune_then_retrain(model: nn.Module, start: float, target: float, pruner: Pruner,
                        retrain: Retrain, steps: int | None, state: PrunerState) -> PrunerState:
    state = pruner.prune(model, target, state)
    retrain(model)
    return state


schedule("oneshot", "prune once from the dense baseline, then retrain", restart_from_baseline=True)(
    _prune_then_retrain)
schedule("iterative", "Han et al.: prune further, retrain, repeat")(_prune_then_retrain)


def cubic_strength(start: float, target: float, step: int, ramp_steps: int) -> float:
    """Zhu & Gupta's cubic ramp from ``start`` to ``target`` over ``ramp_steps`` steps."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return target
    return target + (start - target) * (1.0 - step / ramp_steps) ** 3


@schedule("gradual", "Zhu & Gupta: cubic sparsity ramp during retraining", continuous=True)
def _gradual(model: nn.Module, start: float, target: float, pruner: Pruner,
             retrain: Retrain, steps: int | None, state: PrunerState) -> PrunerState:
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
            pruner.prune(module, cubic_strength(start, target, step, ramp), state)
        counter["step"] += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        retrain(model)
    finally:
        handle.remove()
    return pruner.prune(model, target, state)  # a no-op unless the loop ran fewer steps than announced
