"""The drop-bound search as a Hugging Face ``Trainer`` callback (``pip install secateur[hf]``).

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    callback = PruningCallback(trainer, max_drop=0.5, retrain_epochs=2)
    trainer.add_callback(callback)
    trainer.train()
    callback.result.compression

The callback needs its trainer (a ``TrainerCallback`` is not given it): for the optimizer the
trainer built, and for its evaluation dataloader (its collator, devices and processes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from secateur.errors import ConfigError
from secateur.integrations.evaluation import correct, correctness
from secateur.integrations.rounds import EpochRounds, RoundsView
from secateur.search.config import PruneConfig
from secateur.search.pruner import Evaluate
from secateur.search.session import mask_in_place


class PruningCallback(TrainerCallback, RoundsView):
    """The drop-bound search inside ``Trainer.train``: a round every ``retrain_epochs`` epochs.

    The model gets all-ones masks here, before ``train()`` wraps it (see
    :func:`~secateur.search.session.mask_in_place`); at ``on_train_begin`` the baseline is
    measured and ``trainer.model`` pruned (in place) to the first strength; at the end of
    every ``retrain_epochs``-th epoch the round is judged (accepted, or rolled back) and the
    next strength pruned; when the search ends the best model is restored and
    ``control.should_training_stop`` set. ``evaluate(model)`` defaults to per-example
    correctness on the trainer's ``eval_dataset`` (batches with ``labels``, outputs with
    ``logits``), gathered across processes by its accelerator. Options are
    :class:`~secateur.search.config.PruneConfig`'s (mask granularities only).
    """

    def __init__(self, trainer: Trainer, *, evaluate: Evaluate | None = None, config: PruneConfig | None = None,
                 **options: object) -> None:
        if not isinstance(trainer, Trainer):
            raise ConfigError(f"PruningCallback needs the transformers Trainer it runs in, got {type(trainer).__name__}"
                              "; build the Trainer first, then trainer.add_callback(PruningCallback(trainer, ...))")
        self._trainer = trainer
        self._rounds = EpochRounds(evaluate, config, options)
        mask_in_place(self._model(), self._rounds.config)  # before train() wraps the model and builds the optimizer

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        evaluate = self._rounds.evaluate or eval_evaluator(self._trainer)
        if self._rounds.begin(self._model(), evaluate, [self._trainer.optimizer]):
            control.should_training_stop = True

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self._rounds.epoch_end(self._model(), [self._trainer.optimizer]):
            control.should_training_stop = True

    def _model(self) -> nn.Module:
        """The trainer's model (unwrapped: the one its callbacks and ``save_model`` see)."""
        if self._trainer.model is None:
            raise ConfigError("the Trainer has no model; give it model=")
        return self._trainer.model

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._rounds.end()


def eval_evaluator(trainer: Trainer) -> Evaluate:
    """Per-example correctness over ``trainer``'s evaluation dataloader, gathered across processes."""
    if trainer.eval_dataset is None:
        raise ConfigError("PruningCallback evaluates on the Trainer's eval_dataset: give the Trainer one, "
                          "or pass evaluate=")

    def batch_correct(module: nn.Module, batch: Any) -> torch.Tensor:
        return trainer.accelerator.gather_for_metrics(_batch_correct(module, batch))

    return lambda module: correctness(module, trainer.get_eval_dataloader(), batch_correct)


def _batch_correct(module: nn.Module, batch: Any) -> torch.Tensor:
    """Correctness of one collated batch: ``module(**batch)``'s logits against ``batch["labels"]``."""
    if not isinstance(batch, Mapping) or "labels" not in batch:
        raise ConfigError("PruningCallback's evaluation expects batches with 'labels' (a dict from the collator); "
                          "pass evaluate=")
    outputs = module(**batch)
    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[1]
    return correct(logits, batch["labels"])
