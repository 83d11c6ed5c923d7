"""Structured pruning's part of the checkpoint format: rebuilding a pruned model from its plan.

A structurally pruned model's checkpoint header holds its plan over the original architecture
(see :mod:`secateur.io.storage`). Registering the plan's format here lets
:func:`secateur.io.storage.load_model` rebuild such a model without ``secateur.io`` importing
structured pruning: it looks the applier up by the plan's ``format``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from secateur.io.storage import PLAN_FORMATS
from secateur.structured.plan import PLAN_FORMAT, Plan
from secateur.structured.surgery import reach_plan


@PLAN_FORMATS.register(PLAN_FORMAT, help="channels kept per layer (secateur.structured.Plan)")
def apply_saved_plan(model: nn.Module, plan: Mapping[str, Any]) -> None:
    """Shrink ``model`` (the original architecture, or one pruned part of the way) to ``plan``."""
    reach_plan(model, Plan.from_json(plan))
