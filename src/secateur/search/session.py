"""The drop-bound search driven by a training loop secateur does not own.

:func:`secateur.prune` runs the whole search, retraining included. A :class:`PruningSession`
runs the same search (the same :mod:`~secateur.search.bracket` moves, the same acceptance
rule, the same history rows and results) with the retraining left to its caller: your own
loop, or a trainer's callback (:mod:`secateur.integrations`)::

    session = PruningSession(model, evaluate, max_drop=0.5)
    for candidate in session:   # the model pruned to the next strength
        my_training(candidate)  # then judged (evaluate) when the next one is asked for
    result = session.result     # a PruneResult, like prune's

What the loop trains depends on the granularity:

- a mask granularity (``weight``, ``kernel``, ``n:m``) prunes ``model`` itself, in place:
  masks are parametrizations that keep every ``nn.Parameter`` object, so a trainer or an
  optimizer that holds the model keeps working; a round over the bound is rolled back by
  loading the best state into the same tensors. At the end ``model`` holds the chosen state.
- a physical granularity (``neuron``, ``channel``) changes the module tree, so each round
  is a new, smaller copy (``model`` is not modified): train the model each round gives you,
  with an optimizer built on it. Trainer callbacks refuse these (``trainer=True``).

Options that configure secateur's own retraining (``retrain_epochs``, ``polish_epochs``,
``distill``, ...) and schedules that prune inside secateur's training loop (``gradual``) are
refused: here the caller trains.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from secateur.analysis.summary import round_stats
from secateur.arguments import expect_callable, expect_instance, expect_module, expect_shape
from secateur.errors import ConfigError
from secateur.search.bracket import next_strength, record
from secateur.search.config import PruneConfig, with_options
from secateur.search.orchestrator import (
    PruneResult,
    Run,
    finish_run,
    judge,
    measure,
    prune_round,
    saturated,
    start_run,
)
from secateur.search.pruner import Evaluate, PrunerState, Retrain
from secateur.search.schedules import SCHEDULES
from secateur.unstructured.masks import apply_masks, masks_of, prunable_names

# PruneConfig options that only secateur's own retraining reads (secateur.prune with data=).
OWN_TRAINING = ("retrain_epochs", "retrain_lr", "retrain_lr_factor", "polish_epochs", "distill", "temperature",
                "steps_per_round", "ramp_epochs")


# PruneConfig options only secateur.prune honours: certification after the search, the dense control.
PRUNE_ONLY = ("certify", "certify_tries", "certify_level", "dense_control")


def session_config(config: PruneConfig | None, options: Mapping[str, object], *,
                   trainer: bool = False) -> PruneConfig:
    """``config`` with ``options``, validated, and refused where the caller's loop cannot honour it.

    ``trainer``: the caller is a trainer's callback. The trainer holds the model, so it must be
    pruned in place (physical granularities are refused), and the callback honours
    ``retrain_epochs`` (the trainer's epochs per round).
    """
    expect_instance(config, PruneConfig, "config", "a PruneConfig")
    config = with_options(config, options)
    defaults = PruneConfig()
    for name in OWN_TRAINING:
        if not (trainer and name == "retrain_epochs") and getattr(config, name) != getattr(defaults, name):
            raise ConfigError(f"option {name} configures secateur's own retraining (secateur.prune with data=); "
                              "here your loop trains the model, so drop it")
    for name in PRUNE_ONLY:
        if getattr(config, name) != getattr(defaults, name):
            raise ConfigError(f"option {name} needs secateur.prune (it holds images out of the search or trains a "
                              "dense control after the rounds); a session driven by your loop cannot, so drop it")
    if SCHEDULES.get(config.schedule).continuous:
        raise ConfigError(f"the {config.schedule} schedule prunes inside secateur's own training loop; "
                          "with your loop use iterative or oneshot")
    if trainer and config.physical:
        raise ConfigError(f"granularity {config.granularity!r} removes parts of the model physically, which a "
                          "running trainer cannot follow; use weight, kernel or n:m here, or drive "
                          "secateur.PruningSession from your own loop")
    return config


def mask_in_place(model: nn.Module, config: PruneConfig) -> None:
    """Put ``config``'s granularity's all-ones masks on ``model`` itself (a mask granularity).

    A trainer calls this before it wraps the model (DDP) or builds its optimizer: registering a
    parametrization re-seats each weight's storage, which a wrapper set up before cannot follow
    (DDP reports the weights unused). Later pruning only writes into these masks and weights.
    """
    targets = tuple(config.targets or prunable_names(model, include_bias=config.include_bias))
    if targets and not config.physical:
        apply_masks(model, masks_of(config.spec.prepare(model, targets)))


@dataclass
class _Pending:
    """The round being trained by the caller: its strength, pruner state and extra passes so far."""

    strength: float
    pruner_state: PrunerState
    started: float
    passes: int = 0


def _no_retraining(_round: int) -> Retrain:
    """The round's retraining inside the search: none, the caller's loop trains between calls."""
    return lambda model: None


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every tensor of ``model``'s state (masks included), on its device."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


class PruningSession:
    """One drop-bound search whose rounds the caller's training loop drives (see the module docstring).

    ``evaluate(model)`` returns validation accuracy or per-example correctness, as for
    :func:`secateur.prune`; the session calls it for the baseline (here) and after each round.
    ``options`` are :class:`PruneConfig` fields (``method``, ``granularity``, ``max_drop``,
    ``rounds``, ``confidence``, ``schedule``, ...); ``on_round(row)`` sees every history row.
    ``trainer=True`` is for trainer callbacks (see :func:`session_config`).
    """

    def __init__(self, model: nn.Module, evaluate: Evaluate, *, config: PruneConfig | None = None,
                 input_shape: tuple[int, ...] | None = None, on_round: Callable[[dict], None] | None = None,
                 trainer: bool = False, **options: object) -> None:
        expect_module(model)
        if evaluate is None:
            raise ConfigError("evaluate= is required: a function taking the model and returning validation "
                              "accuracy or per-example correctness")
        expect_callable(evaluate, "evaluate")
        expect_callable(on_round, "on_round", "the history row")
        shape = expect_shape(input_shape)
        self._config = session_config(config, options, trainer=trainer)
        self._began = time.perf_counter()
        self._run: Run = start_run(model, self._config, evaluate, _no_retraining, shape, None, {})
        self._in_place = not self._config.physical
        self._model = model
        self._best_state: dict[str, torch.Tensor] = {}
        if self._in_place:
            apply_masks(model, masks_of(self._run.baseline))  # all-ones masks: model now equals the baseline
            self._run.best, self._best_state = model, _snapshot(model)
        self._on_round = on_round
        self._pending: _Pending | None = None
        self._candidate: nn.Module = self._run.best
        self.result: PruneResult | None = None

    @property
    def baseline_accuracy(self) -> float:
        """Validation accuracy of the dense model, as ``evaluate`` measured it."""
        return self._run.baseline_val.accuracy

    @property
    def history(self) -> list[dict]:
        """One row per judged round, as in a ``secateur.prune`` run's ``history.jsonl``."""
        return self._run.history

    @property
    def in_place(self) -> bool:
        """Whether rounds prune the model given (masks) rather than copies of it (physical pruning)."""
        return self._in_place

    @property
    def model(self) -> nn.Module:
        """The model to train now (with masks, the model given; else this round's copy)."""
        return self._candidate

    def __iter__(self) -> Iterator[nn.Module]:
        return self

    def __next__(self) -> nn.Module:
        model = self.next_round()
        if model is None:
            raise StopIteration
        return model

    def next_round(self) -> nn.Module | None:
        """Judge the round just trained (if any), then return the model to train next.

        That is the same model for one more pass when a round over the bound has ``recovery``
        passes left, else the best model pruned to the next strength. None once the search
        has ended; then :attr:`result` holds the answer and the chosen model.
        """
        if self.result is not None:
            return None
        if self._pending is not None and not self._settle(self._pending):
            return self._candidate
        settings = self._config.search_settings()
        strength = None if saturated(self.history) else next_strength(self._run.state, settings)
        if strength is None:
            self.finish()
            return None
        self._prune_to(strength)
        return self._candidate

    def finish(self) -> PruneResult:
        """End the search now: a round not yet judged is discarded, the best model restored and returned."""
        if self.result is None:
            self._pending = None
            if self._in_place:
                self._model.load_state_dict(self._best_state)
            self._candidate = self._run.best
            self.result = finish_run(self._run, None, {}, time.perf_counter() - self._began)
        return self.result

    def _prune_to(self, strength: float) -> None:
        """Start a round: the best model (or the baseline, for restarting schedules) pruned to ``strength``."""
        run, started = self._run, time.perf_counter()
        restart = run.schedule.restart_from_baseline
        if self._in_place:
            self._model.load_state_dict(run.baseline.state_dict() if restart else self._best_state)
            candidate = self._model
        else:
            candidate = copy.deepcopy(run.baseline if restart else run.best)
        self._pending = _Pending(strength, prune_round(run, candidate, strength), started)
        self._candidate = candidate

    def _settle(self, pending: _Pending) -> bool:
        """Judge the trained candidate; False when it gets another pass (over the bound, recovery left)."""
        run, candidate = self._run, self._candidate
        outcome = measure(run.evaluate, candidate, run.baseline_val)
        drop, extra, feasible = judge(run, outcome)
        if not feasible and pending.passes < self._config.recovery:
            pending.passes += 1
            return False
        row = {"round": run.state.round + 1, "strength": pending.strength, "level": run.pruner.levels(pending.strength),
               "val_accuracy": outcome.accuracy, "drop": drop, "margin": extra, "feasible": feasible,
               "recovery_passes": pending.passes}
        row.update(round_stats(candidate, run.baseline, run.pruner.targets, run.input_shape))
        row["seconds"] = time.perf_counter() - pending.started
        if feasible:
            run.pruner_state = pending.pruner_state
            if self._in_place:
                self._best_state = _snapshot(candidate)
            else:
                run.best = candidate
        run.state = record(run.state, pending.strength, feasible, self._config.search_settings())
        run.history.append(row)
        self._pending = None
        if self._on_round is not None:
            self._on_round(row)
        return True


