"""Per-example correctness of a classifier over a trainer's validation batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from secateur.errors import ConfigError

IGNORED = -100  # the label that marks a position not scored (the Hugging Face and cross-entropy convention)
CorrectOf = Callable[[nn.Module, Any], torch.Tensor]  # (module, batch) -> bool tensor, one entry per example


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``argmax(logits) == labels`` per scored example (labels of :data:`IGNORED` left out), flat."""
    if logits.shape[:-1] != labels.shape:
        raise ConfigError(f"the model's outputs have shape {tuple(logits.shape)} for labels of shape "
                          f"{tuple(labels.shape)}; expected (..., classes) logits, else pass evaluate=")
    scored = labels != IGNORED
    return (logits.argmax(-1) == labels)[scored].flatten()


def correctness(module: nn.Module, batches: Iterable[Any], correct_of: CorrectOf) -> torch.Tensor:
    """Every batch's correctness, concatenated, on the CPU; ``module`` in eval mode meanwhile."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            parts = [correct_of(module, batch).cpu() for batch in batches]
    finally:
        module.train(was_training)
    if not parts or sum(part.numel() for part in parts) == 0:
        raise ConfigError("the validation data is empty (no scored example); give the trainer validation data")
    return torch.cat(parts)


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for a module without any)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
