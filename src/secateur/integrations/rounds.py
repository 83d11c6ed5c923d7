"""A :class:`~secateur.search.session.PruningSession` advanced by a trainer's epochs.

What every trainer callback shares: the session starts (baseline measured, model pruned to
the first strength) when training begins, is judged and advanced every ``retrain_epochs``
training epochs, and asks the trainer to stop when the search ends, leaving the best model
in place. After every pruning step the trainer's optimizers are cleared at pruned positions
(:func:`~secateur.unstructured.masks.mask_optimizer_state_`), so stale momentum cannot move
the stored weights away from 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from secateur.arguments import expect_callable
from secateur.errors import ConfigError
from secateur.search.config import PruneConfig
from secateur.search.orchestrator import PruneResult
from secateur.search.pruner import Evaluate
from secateur.search.session import PruningSession, session_config
from secateur.unstructured.masks import mask_optimizer_state_


class EpochRounds:
    """One search whose rounds last ``retrain_epochs`` epochs of a trainer."""

    def __init__(self, evaluate: Evaluate | None, config: PruneConfig | None, options: Mapping[str, object]) -> None:
        expect_callable(evaluate, "evaluate")
        self.config = session_config(config, options, trainer=True)
        if self.config.retrain_epochs < 1:
            raise ConfigError(f"retrain epochs (the trainer's epochs per round) must be >= 1, "
                              f"got {self.config.retrain_epochs}")
        self.evaluate = evaluate
        self.session: PruningSession | None = None
        self._epochs = 0

    @property
    def result(self) -> PruneResult | None:
        """The search's answer once it has ended (None before)."""
        return self.session.result if self.session is not None else None

    def begin(self, model: nn.Module, evaluate: Evaluate, optimizers: Iterable[torch.optim.Optimizer | None]) -> bool:
        """Measure the baseline and prune to the first strength; True if the trainer should stop.

        ``optimizers``: the trainer's (None where it has none yet), cleared at pruned positions.
        """
        self.session = PruningSession(model, evaluate, config=self.config, trainer=True)
        self._epochs = 0
        return self._advance(model, optimizers)

    def epoch_end(self, model: nn.Module, optimizers: Iterable[torch.optim.Optimizer | None]) -> bool:
        """Count a training epoch; at a round's end judge it and prune on. True if the trainer should stop."""
        if self.session is None or self.result is not None:
            return self.result is not None
        self._epochs += 1
        if self._epochs < self.config.retrain_epochs:
            return False
        self._epochs = 0
        return self._advance(model, optimizers)

    def end(self) -> PruneResult | None:
        """Training ended (the search, or the trainer's epoch budget): the best model is left in place."""
        return self.session.finish() if self.session is not None else None

    def _advance(self, model: nn.Module, optimizers: Iterable[torch.optim.Optimizer | None]) -> bool:
        assert self.session is not None
        if self.session.next_round() is None:
            return True
        for optimizer in optimizers:
            if optimizer is not None:
                mask_optimizer_state_(optimizer, model)
        return False


class RoundsView:
    """What every trainer callback shows of its :class:`EpochRounds` (held as ``_rounds``)."""

    _rounds: EpochRounds

    @property
    def session(self) -> PruningSession | None:
        """The running search (None before training starts)."""
        return self._rounds.session

    @property
    def result(self) -> PruneResult | None:
        """The answer once the search has ended, as :func:`secateur.prune` returns it."""
        return self._rounds.result
