"""The drop-bound search over pruning strength: raise, roll back, bisect.

The search works on one scalar, the *strength* x >= 0 (0 = the dense model; each method
maps x to its own level, see :mod:`secateur.unstructured.methods`). Each round tries a strength:

- while no round has failed, the next strength is the last accepted one plus a step (the
  step grows by ``growth`` after every success, so deep sparsity is reached in few rounds);
- a round whose retrained model breaks the bound is rolled back to the last accepted state
  and marks the failed strength; from then on the next strength bisects the bracket
  ``(accepted, failed)``;
- once the bracket is narrower than ``resolution`` after an *accepted* round, a schedule
  that continues from the accepted model (iterative, gradual) reopens it: the accepted model
  has been retrained further since the failure, so a small step (``resolution``) may now
  hold. A bracket that collapses on a *failed* round ends the search (``patience`` allows
  that many retries; the default 0 allows none, because the accepted model has not changed
  and a retry would only draw another training seed, another chance for a round to pass by
  luck on the same validation images). The search also ends when the round budget is
  spent, and at once for schedules that restart from the baseline.
  The answer is the most compressed feasible model seen.

This module holds only the bookkeeping (pure and serialisable, so ``--resume`` can restore
it); :mod:`secateur.search.orchestrator` runs the rounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from secateur.errors import ConfigError


@dataclass(frozen=True)
class SearchSettings:
    """How the strength moves from round to round."""

    rounds: int = 15
    start: float = 2.0
    step: float = 0.5
    growth: float = 1.25
    resolution: float = 0.1
    max_strength: float = 12.0
    patience: int = 0  # retries after a bracket collapses on a failed round (see the module docstring)

    def validate(self) -> SearchSettings:
        """Raise ConfigError on impossible settings."""
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.start <= 0 or self.step <= 0 or self.resolution <= 0:
            raise ConfigError("start, step and resolution must all be > 0")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0, got {self.patience}")
        if self.growth < 1:
            raise ConfigError(f"growth must be >= 1, got {self.growth}")
        return self


@dataclass
class SearchState:
    """Where the search stands; saved after every round so a run can resume."""

    round: int = 0
    best_strength: float = 0.0  # the strength of the best (last passed) round
    failed: float | None = None
    step: float = 0.0
    best_round: int | None = None
    stalls: int = 0

    def to_dict(self) -> dict:
        """JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SearchState:
        """Inverse of :meth:`to_dict`."""
        data = {**data, "best_strength": data.get("best_strength", data.get("accepted", 0.0))}  # runs before 0.2
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def initial_state(settings: SearchSettings) -> SearchState:
    """The state before round 1."""
    return SearchState(step=settings.step)


def next_strength(state: SearchState, settings: SearchSettings) -> float | None:
    """The strength to try next, or None when the search is finished."""
    if state.round >= settings.rounds:
        return None
    if state.failed is None:
        if state.round == 0 and state.best_strength == 0.0:
            return min(settings.start, settings.max_strength)
        candidate = state.best_strength + state.step
        return None if state.best_strength >= settings.max_strength else min(candidate, settings.max_strength)
    if collapsed(state, settings):
        return None
    return (state.best_strength + state.failed) / 2


def collapsed(state: SearchState, settings: SearchSettings) -> bool:
    """Whether the bracket (accepted, failed) is no wider than the resolution.

    A reopened step of exactly ``resolution`` that fails must count as collapsed; without
    the tolerance, float rounding (2.689 + 0.1 - 2.689 > 0.1) cost a wasted bisection round.
    """
    return state.failed is not None and state.failed - state.best_strength <= settings.resolution + 1e-9


def record(state: SearchState, strength: float, feasible: bool, settings: SearchSettings) -> SearchState:
    """The state after a round at ``strength`` that was ``feasible`` (or not)."""
    state = dataclasses.replace(state, round=state.round + 1)
    if feasible:
        state.best_strength, state.best_round, state.stalls = strength, state.round, 0
        if state.failed is None:
            state.step *= settings.growth
    else:
        state.failed = strength if state.failed is None else min(state.failed, strength)
    if collapsed(state, settings) and (feasible or state.stalls < settings.patience):
        stalls = 0 if feasible else state.stalls + 1
        state.failed, state.step, state.stalls = None, settings.resolution, stalls
    return state
