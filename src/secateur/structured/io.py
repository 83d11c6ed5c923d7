"""Saving and loading pruned models without pickle.

A pruned model is a folder with ``plan.json`` (format tag, the model record
``{"name": ..., "args": {...}}`` that rebuilds the *original* architecture, and the
:class:`Plan`) and ``model.safetensors`` (the pruned weights and buffers). Loading builds the
original architecture, applies the plan, then loads the weights strictly. Nothing is ever
unpickled: JSON and safetensors only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from secateur.errors import CheckpointError, ConfigError
from secateur.io.storage import atomic_write_bytes
from secateur.structured.plan import Plan
from secateur.structured.surgery import apply_plan

PRUNED_FORMAT = "secateur-pruned/1"
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"

Builder = Callable[..., nn.Module]


def save_pruned(model: nn.Module, plan: Plan, path: str | os.PathLike, model_record: Mapping[str, Any]) -> Path:
    """Write ``plan.json`` + ``model.safetensors`` into folder ``path``; returns the folder.

    ``model_record`` is ``{"name": ..., "args": {...}}`` such that ``build(name, **args)``
    rebuilds the unpruned architecture (see ``secateur.zoo.models.model_record``).
    """
    if not isinstance(model_record, Mapping) or "name" not in model_record:
        raise ConfigError("model_record must be a dict with 'name' (and optional 'args') that rebuilds the model")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"name": model_record["name"], "args": dict(model_record.get("args", {}))}
    doc = {"format": PRUNED_FORMAT, "model": record, "plan": plan.to_json()}
    try:
        text = json.dumps(doc, indent=1)
    except (TypeError, ValueError):
        raise ConfigError(f"model_record must hold JSON values only, got {record!r}") from None
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state, metadata={"format": PRUNED_FORMAT}))
    atomic_write_bytes(folder / PLAN_FILE, text.encode())
    return folder


def read_pruned_plan(path: str | os.PathLike) -> tuple[dict, Plan]:
    """The model record and plan stored in a pruned-model folder."""
    file = Path(path) / PLAN_FILE
    try:
        doc = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file} not found; is {path} a folder written by save_pruned?") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {file}: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != PRUNED_FORMAT or "model" not in doc:
        raise CheckpointError(f"{file} is not a secateur pruned model (format {PRUNED_FORMAT!r})")
    return doc["model"], Plan.from_json(doc.get("plan"))


def _default_build(name: str, **args: Any) -> nn.Module:
    from secateur.zoo.models import build_model

    return build_model(name, **args)


def load_pruned(path: str | os.PathLike, build: Builder | None = None) -> nn.Module:
    """Rebuild the original architecture, apply the stored plan and load the pruned weights.

    ``build(name, **args)`` makes the unpruned model (default ``secateur.zoo.models.build_model``).
    """
    record, plan = read_pruned_plan(path)
    model = (build or _default_build)(record["name"], **record.get("args", {}))
    apply_plan(model, plan)
    weights = Path(path) / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise CheckpointError(f"{weights} not found; the pruned model folder is incomplete") from None
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {weights}: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"weights in {weights} do not match the pruned architecture: {first}") from None
    return model


def state_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (for reporting memory savings)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
