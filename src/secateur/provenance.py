"""What rebuilds a model, carried on the model itself.

Two plain-data attributes on the root ``nn.Module``, set by the code that makes or reshapes it:

* the *model record* ``{"name": ..., "args": {...}}``: ``build_model(name, **args)`` rebuilds
  the original architecture (set by :func:`secateur.zoo.models.build_model`);
* the *plan*: a structured pruning plan as JSON (``Plan.to_json()``) over that original
  architecture, composed over every surgery so far (set by
  :func:`secateur.structured.surgery.apply_plan`).

:func:`secateur.io.storage.save_model` writes both into the checkpoint header, so
``load_model(path)`` rebuilds the model with no other argument. They are JSON values in the
module's ``__dict__``, so they survive ``copy.deepcopy`` and never enter the ``state_dict``.
This module depends on nothing in secateur, so every layer may use it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

Factory = Callable[..., nn.Module]  # factory(**args) -> a model: what a model record names

MODEL_ATTR = "_secateur_model"
PLAN_ATTR = "_secateur_plan"


def record_model(model: nn.Module, record: Mapping[str, Any] | None) -> nn.Module:
    """Remember how to rebuild ``model``'s original architecture (None forgets it)."""
    _set(model, MODEL_ATTR, record)
    return model


def recorded_model(model: nn.Module) -> dict | None:
    """The model record ``{"name": ..., "args": {...}}`` carried by ``model``, or None."""
    return _get(model, MODEL_ATTR)


def record_plan(model: nn.Module, plan: Mapping[str, Any] | None) -> nn.Module:
    """Remember ``model``'s structured plan (JSON, over the original architecture; None: dense)."""
    _set(model, PLAN_ATTR, plan)
    return model


def recorded_plan(model: nn.Module) -> dict | None:
    """The plan JSON carried by ``model`` (None if it was never structurally pruned)."""
    return _get(model, PLAN_ATTR)


def _set(model: nn.Module, attr: str, value: Mapping[str, Any] | None) -> None:
    """Store a private deep copy, so later edits to the caller's dict do not leak in."""
    if value is None:
        model.__dict__.pop(attr, None)
    else:
        object.__setattr__(model, attr, copy.deepcopy(dict(value)))


def _get(model: nn.Module, attr: str) -> dict | None:
    value = model.__dict__.get(attr)
    return copy.deepcopy(value) if value is not None else None
