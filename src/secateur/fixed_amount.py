"""One cut of a fixed amount, without the search: ``torch.nn.utils.prune``'s calls, in secateur.

:func:`prune_weights` masks single weights with any weight method (``WEIGHT_METHODS``) and
:func:`prune_channels` removes whole channels physically with any channel method
(``GROUP_METHODS``), both in place, with the same method and option names as
:func:`secateur.prune`. No retraining, no accuracy check: that is the search's business.

``amount`` is the fraction of what still survives that the call removes, as in
``torch.nn.utils.prune``: two calls at 0.5 leave a quarter. For weights, exactly
``round(amount * surviving)`` weights go per layer (one threshold over all layers for the
global methods, e.g. ``global-magnitude``); weights that are zero already count as pruned.
For channels, every group of coupled channels loses ``floor(amount * channels)`` (fewer where
``min_channels`` / ``round_to`` keep more); the output layer is never pruned.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from secateur.arguments import expect_module
from secateur.errors import ConfigError
from secateur.provenance import recorded_model
from secateur.structured.graph import analyse
from secateur.structured.importance import GROUP_METHODS
from secateur.structured.plan import Plan, plan_pruning
from secateur.structured.pruner import example_input, model_device
from secateur.structured.surgery import apply_plan
from secateur.unstructured.masks import apply_masks, effective, masks_of, prunable_names
from secateur.unstructured.methods import WEIGHT_METHODS, Level, WeightMethod
from secateur.zoo.data import Dataset, batches

TAYLOR_BATCHES = 4  # training batches of 128 that gradient-based channel methods see (as in the search)


def check_amount(amount: object) -> float:
    """``amount`` as a float in [0, 1); anything else is a one-line ConfigError."""
    if isinstance(amount, numbers.Real) and not isinstance(amount, bool) and 0 <= float(amount) < 1:
        return float(amount)
    raise ConfigError(f"amount must be a fraction in [0, 1) of what survives (0.9 removes 90%), got {amount!r}")


# --------------------------------------------------------------------------- single weights


def prune_weights(model: nn.Module, amount: float | None = None, method: str = "global-magnitude", *,
                  level: float | None = None, targets: Sequence[str] | None = None, include_bias: bool = False,
                  seed: int = 0, optimizer: torch.optim.Optimizer | None = None) -> dict[str, torch.Tensor]:
    """Mask ``amount`` of the surviving weights of ``model`` in place; returns the masks now on it.

    ``method`` is a weight method name (``secateur list``); its scope decides whether one
    threshold spans every target (``global-magnitude``, ``lamp``) or each layer loses
    ``amount`` (``magnitude``, ``random``, ``han``). ``level`` instead of ``amount`` is the
    method's own level, as the search's history records it (han's q: ``|w| < q * std`` goes,
    std of the layer as it is now; a total sparsity for the others), not relative to what
    survives. ``han`` given an ``amount`` uses the q that removes it from a Gaussian layer
    (about that amount). ``targets`` default to every Linear / Conv weight (and biases with
    ``include_bias``); ``seed`` seeds ``random``; ``optimizer`` has its state cleared where
    weights were pruned. Returns ``{name: bool mask}`` (True = kept) for every target.
    """
    expect_module(model)
    entry = WEIGHT_METHODS.get(method)
    names = list(targets) if targets is not None else prunable_names(model, include_bias=include_bias)
    if not names:
        raise ConfigError("the model has no prunable tensors (Linear / Conv weights); pass targets=")
    weights = {name: effective(model, name).detach() for name in names}
    context = {"reference_std": None, "generator": torch.Generator().manual_seed(int(seed))}
    with torch.no_grad():
        masks = entry.select(weights, _levels(entry, weights, amount, level),
                             **{need: context.get(need) for need in entry.needs})  # learned: none here
        apply_masks(model, masks, optimizer=optimizer)
    now = masks_of(model)
    return {name: now[name] for name in names}


def _levels(entry: WeightMethod, weights: Mapping[str, torch.Tensor], amount: float | None,
            level: float | None) -> Level:
    """The method's level(s) that remove ``amount`` of the surviving weights (or ``level`` as given)."""
    if (amount is None) == (level is None):
        raise ConfigError("give amount= (a fraction of the surviving weights) or level= (the method's own), not "
                          f"{'both' if amount is not None else 'neither'}")
    if level is not None:
        if isinstance(level, bool) or not isinstance(level, numbers.Real) or not math.isfinite(level) or level < 0:
            raise ConfigError(f"level must be a finite number >= 0, got {level!r}")
        return float(level)
    fraction = check_amount(amount)
    if entry.scope == "global":
        return entry.amount_to_level(_total_after(list(weights.values()), fraction))
    return {name: entry.amount_to_level(_total_after([w], fraction)) for name, w in weights.items()}


def _total_after(tensors: list[torch.Tensor], amount: float) -> float:
    """The fraction of ``tensors`` that is zero once ``amount`` of their nonzero entries go too."""
    size = sum(t.numel() for t in tensors)
    zero = sum(int((t == 0).sum()) for t in tensors)
    return (zero + round(amount * (size - zero))) / max(size, 1)


# --------------------------------------------------------------------------- whole channels


@dataclass(frozen=True)
class ChannelCut:
    """What :func:`prune_channels` removed: its plan (over the model as it was) and, per group
    of coupled channels (named by its first producing layer), ``(kept, before)``."""

    plan: Plan
    groups: dict[str, tuple[int, int]]

    @property
    def kept(self) -> dict[str, int]:
        """Channels each group kept."""
        return {name: kept for name, (kept, _) in self.groups.items()}


def prune_channels(model: nn.Module, amount: float = 0.5, method: str = "l1", *,
                   input_shape: Sequence[int] | None = None, scope: str = "local", min_channels: int = 1,
                   round_to: int = 1, ignore: Sequence[str] = (), data: Dataset | None = None,
                   batches: Iterable | None = None, seed: int = 0, attention: str = "heads") -> ChannelCut:
    """Remove ``amount`` of the channels of ``model`` physically, in place; returns what went.

    The same module objects get smaller tensors (structured surgery), so create any optimiser
    afterwards; ``secateur.save_model`` then writes a checkpoint that rebuilds the smaller
    model. ``method`` is a channel method name (``l1``, ``l2``, ``bn-scale``, ``fpgm``,
    ``taylor``, ``random``); ``scope="global"`` ranks channels across groups instead of taking
    ``amount`` of each. ``input_shape`` (one example, e.g. ``(1, 28, 28)``) defaults to the one
    the model was built for by ``secateur.build_model``. ``taylor`` needs ``data`` (a few
    training batches are taken from it) or ``batches`` of ``(inputs, targets)``; ``seed``
    seeds ``random``.
    """
    expect_module(model)
    fraction = check_amount(amount)
    entry = GROUP_METHODS.get(method)
    x = example_input(model, _input_shape(model, input_shape))
    graph = analyse(model, x, ignore=tuple(ignore), attention=attention)
    feed = _feed(data, batches, model_device(model)) if "batches" in entry.needs else None
    with torch.enable_grad():
        plan = plan_pruning(model, graph, ratio=fraction, method=entry.name, scope=scope, min_channels=min_channels,
                            round_to=round_to, batches=feed, generator=torch.Generator().manual_seed(int(seed)))
    with torch.no_grad():
        apply_plan(model, plan, x)
    return ChannelCut(plan, {name: (int(kept), int(size)) for name, (kept, size) in plan.info["groups"].items()})


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """``input_shape`` as given, else the one recorded by ``build_model``; one line if neither."""
    if input_shape is None:
        record = recorded_model(model) or {}
        input_shape = (record.get("args") or {}).get("input_shape")
    if input_shape is None:
        raise ConfigError("prune_channels traces the model: pass input_shape= (one example, e.g. (1, 28, 28))")
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(f"input_shape must be positive integers like (1, 28, 28), got {input_shape!r}")
    return shape


def _feed(data: Dataset | None, given: Iterable | None, device: torch.device) -> list | None:
    """``(inputs, targets)`` batches on ``device``: those given, else a few of ``data``'s training split."""
    if given is None and data is not None:
        if not isinstance(data, Dataset):
            raise ConfigError("data must be a secateur Dataset (secateur.load_dataset); or pass batches=")
        given = itertools.islice(batches(data.train, 128, mean=data.mean, std=data.std), TAYLOR_BATCHES)
    if given is None:
        return None
    feed = []
    for batch in given:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(t, torch.Tensor)
                                                                             for t in batch[:2])):
            raise ConfigError(f"batches must be (inputs, targets) pairs of tensors, got {type(batch).__name__}")
        feed.append((batch[0].to(device), batch[1].to(device)))
    return feed
