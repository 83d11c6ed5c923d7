"""The hooks of the Lightning callbacks, shared by both import names (``lightning``, ``pytorch_lightning``).

This module imports neither package: :mod:`secateur.integrations.lightning` and
:mod:`secateur.integrations.pytorch_lightning` each combine :class:`LightningPruning` with
their package's ``Callback``. The trainer is used through its public attributes only
(``val_dataloaders``, ``optimizers``, ``should_stop``, ``world_size``, ``strategy.all_gather``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.integrations.evaluation import correct, correctness, device_of
from secateur.integrations.rounds import EpochRounds, RoundsView
from secateur.search.config import PruneConfig
from secateur.search.pruner import Evaluate
from secateur.search.session import mask_in_place


class LightningPruning(RoundsView):
    """The drop-bound search inside ``Trainer.fit``: a round every ``retrain_epochs`` training epochs.

    At ``setup`` the module gets all-ones masks, before the strategy wraps it (see
    :func:`~secateur.search.session.mask_in_place`); at ``on_train_start`` the baseline is
    measured and the module pruned (in place) to the first strength; at the end of every
    ``retrain_epochs``-th epoch the round is judged (accepted, or rolled back) and the next
    strength pruned; when the search ends the best model is restored and
    ``trainer.should_stop`` set. ``evaluate(module)`` defaults to per-example correctness on
    the trainer's validation dataloaders (batches ``(inputs, labels, ...)``, ``module(inputs)``
    returning logits), gathered across processes. Options are
    :class:`~secateur.search.config.PruneConfig`'s (mask granularities only).
    """

    def __init__(self, *, evaluate: Evaluate | None = None, config: PruneConfig | None = None,
                 **options: object) -> None:
        super().__init__()
        self._rounds = EpochRounds(evaluate, config, options)

    def setup(self, trainer: Any, pl_module: nn.Module, stage: str) -> None:
        if stage == "fit":  # before the strategy wraps the module and the optimizers are built
            mask_in_place(pl_module, self._rounds.config)

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        evaluate = self._rounds.evaluate or validation_evaluator(trainer)
        if self._rounds.begin(pl_module, evaluate, trainer.optimizers):
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        if self._rounds.epoch_end(pl_module, trainer.optimizers):
            trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self._rounds.end()


def validation_evaluator(trainer: Any) -> Evaluate:
    """Per-example correctness over the trainer's validation dataloaders (loaded if not yet)."""
    loaders = trainer.val_dataloaders
    if loaders is None:  # no sanity check ran yet: load them as the validation loop would
        trainer.fit_loop.epoch_loop.val_loop.setup_data()
        loaders = trainer.val_dataloaders
    if loaders is None:
        raise ConfigError("PruningCallback evaluates on the trainer's validation data: give fit() val_dataloaders "
                          "(and the module a validation_step), or pass evaluate=")
    loaders = list(loaders) if isinstance(loaders, Sequence) else [loaders]

    def evaluate(module: nn.Module) -> torch.Tensor:
        result = torch.cat([correctness(module, loader, _batch_correct) for loader in loaders])
        if trainer.world_size > 1:  # each process scored its shard: decide on all of them, identically
            shard = result.to(device=device_of(module), dtype=torch.uint8)  # bool is not every backend's
            result = trainer.strategy.all_gather(shard).reshape(-1).cpu().bool()
        return result

    return evaluate


def _batch_correct(module: nn.Module, batch: Any) -> torch.Tensor:
    """Correctness of one ``(inputs, labels, ...)`` batch."""
    if not isinstance(batch, Sequence) or len(batch) < 2:
        raise ConfigError(f"PruningCallback's evaluation expects (inputs, labels) batches, got "
                          f"{type(batch).__name__}; pass evaluate=")
    device = device_of(module)
    return correct(module(batch[0].to(device)), batch[1].to(device))
