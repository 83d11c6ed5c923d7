"""Structured pruning: remove whole neurons, channels and filters, physically.

Typical use::

    from secateur import build_model, load_model, save_model
    from secateur.structured import prune_channels
    model = build_model("torchvision:resnet50", num_classes=1000)         # records its factory
    x = torch.randn(1, 3, 224, 224)
    model, plan = prune_channels(model, x, ratio=0.5, method="l1")    # smaller, same classes
    save_model(model, "out/pruned")              # out/pruned.safetensors + .json (factory + plan)
    again, meta = load_model("out/pruned")      # rebuilt from the factory and plan; no pickle

The steps, each usable alone:

- :func:`analyse` traces the model (``torch.fx``) into a :class:`DependencyGraph` of
  :class:`Group` s of coupled channels: conv -> BN -> activation -> conv chains, residual
  adds, concatenation offsets, depthwise convs, grouped convs (the same channels in every
  group), GroupNorm groups, LayerNorms over the channels, flatten / view into Linear, pooling,
  squeeze-excitation and other gating multiplies, channel shuffles (the same positions kept in
  every group), norms over the spatial dims, means / sums / norms over the channels broadcast
  back onto them as normalisers (GlobalResponseNorm, hand-written LayerNorm / RMSNorm), and
  F.batch_norm / F.linear / F.conv2d ... calls on a module's own parameters. Channels that
  reach an op it cannot follow are *locked* (kept; reasons in ``graph.notes``, and per op in
  ``graph.unfollowed``); a submodule fx cannot trace is kept whole as an opaque layer; a model
  whose own forward cannot be traced raises :class:`~secateur.errors.UnsupportedModelError`
  naming the op and module path. The model's outputs (the classifier) and ``ignore`` d layers
  are never pruned.
- A pruned LayerNorm normalises over fewer channels, so the pruned model differs from the
  original before retraining; it equals the original with the removed channels zeroed and that
  LayerNorm taken over the kept channels only. The same holds for a statistic over the channels
  used as a normaliser: a mean (GlobalResponseNorm's mean of the per-channel norms) is taken
  over the kept channels, dividing by their count; a sum or norm over the channels is exactly
  the original's where the removed channels are zero at its input.
- :func:`plan_pruning` scores channels with a :data:`GROUP_METHODS` name (``l1``, ``l2``,
  ``bn-scale``, ``taylor``, ``random``) and allocates locally or globally, with
  ``min_channels``, ``round_to`` and per-layer ``ratios``; it returns a JSON-able :class:`Plan`.
- :func:`apply_plan` performs the surgery atomically (all or nothing); the model then carries
  its plan over the original architecture (composed over repeated prunings), which
  ``secateur.save_model`` stores in the checkpoint header and ``secateur.load_model`` re-applies
  (:mod:`secateur.structured.checkpoint` registers the plan format with ``secateur.io.storage``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

import secateur.structured.checkpoint  # noqa: F401  (registers the plan format for load_model)
from secateur.structured.graph import DependencyGraph, Group, Member, Unfollowed, analyse
from secateur.structured.importance import GROUP_METHODS
from secateur.structured.plan import Plan, compose, plan_pruning
from secateur.structured.surgery import apply_plan, current_plan, reach_plan

__all__ = [
    "GROUP_METHODS",
    "DependencyGraph",
    "Group",
    "Member",
    "Plan",
    "Unfollowed",
    "analyse",
    "apply_plan",
    "compose",
    "current_plan",
    "plan_pruning",
    "prune_channels",
    "reach_plan",
]


def prune_channels(model: nn.Module, example_input: torch.Tensor, ratio: float = 0.5, *,
                   method: str = "l1", scope: str = "local", ignore: Sequence[str] = (), strict: bool = False,
                   min_channels: int = 1, round_to: int = 1, ratios: Mapping[str, float] | None = None,
                   batches: Iterable | None = None, generator: torch.Generator | None = None,
                   inplace: bool = True, attention: str = "heads") -> tuple[nn.Module, Plan]:
    """Analyse, plan and apply in one call; returns the (smaller) model and its plan.

    With ``inplace=False`` the input model is left untouched and a pruned copy is returned.
    ``attention="head-dims"`` prunes attention layers' per-head dimension instead of whole heads.
    """
    target = model if inplace else copy.deepcopy(model)
    graph = analyse(target, example_input, ignore=ignore, strict=strict, attention=attention)
    plan = plan_pruning(target, graph, ratio=ratio, method=method, scope=scope,
                        min_channels=min_channels, round_to=round_to, ratios=ratios,
                        batches=batches, generator=generator)
    apply_plan(target, plan, example_input)
    return target, plan
