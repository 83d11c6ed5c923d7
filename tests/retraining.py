"""A stand-in retraining for tests of the search's logic: it changes the model it is given, as real
retraining does (``secateur.prune`` refuses a ``train=`` that leaves its model unchanged)."""

from __future__ import annotations

import torch
from torch import nn


def nudge(model: nn.Module) -> None:
    """Add 1e-6 to the first trainable parameter: no real training, but not a no-op either."""
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(1e-6)
