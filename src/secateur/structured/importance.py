"""Group importance criteria: one score per coupled channel, higher = more important.

Registered in :data:`GROUP_METHODS` (all scores are summed over every layer of the group):

- ``l1`` / ``l2``: norm of every weight attached to the channel (its filters in the layers
  that produce it, its input columns in the layers that consume it);
- ``bn-scale``: ``|gamma|`` of the BatchNorm / GroupNorm layers on the channel (network
  slimming); groups without a norm layer fall back to ``l2``;
- ``taylor``: first-order Taylor estimate ``|sum(w * dL/dw)|`` of the channel's filters and
  norm parameters, accumulated over ``batches`` of ``(inputs, targets)`` (cross-entropy loss);
- ``random``: uniform random scores from ``generator`` (the baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from secateur.errors import ConfigError
from secateur.registry import Registry
from secateur.search.pruner import Learned
from secateur.structured.attention import weight_view
from secateur.structured.graph import DependencyGraph, Group, Member
from secateur.structured.splits import SIZE_ROLE
from secateur.structured.tracker import split_param_key

Scores = dict[str, torch.Tensor]
ScoreFn = Callable[..., Scores]


@dataclass(frozen=True)
class GroupMethod:
    """A channel importance score and what it needs (``"batches"``, ``"generator"``, ``"learned"``), declared.

    Calling it passes only the declared context, and a missing need is a one-line error.
    ``learn(model, targets, trainer, input_shape=, ignore=) -> Learned``: a training phase of the
    method's own (e.g. L0 gates), run once on a copy of the baseline before the search; its
    weights are where the first cut starts.
    """

    name: str
    score: ScoreFn
    doc: str
    needs: frozenset[str] = frozenset()
    learn: Callable[..., Learned] | None = None

    def __call__(self, model: nn.Module, graph: DependencyGraph, **context: Any) -> Scores:
        missing = sorted(need for need in self.needs if context.get(need) is None)
        if "learned" in missing:
            raise ConfigError(f"method {self.name!r} ranks channels after a training phase of its own: run it "
                              "through secateur.prune / secateur prune with data (a fixed amount has no such phase)")
        if missing:
            raise ConfigError(f"method {self.name!r} needs {', '.join(missing)} (e.g. training batches: pass data=)")
        return self.score(model, graph, **{need: context[need] for need in self.needs})


GROUP_METHODS: Registry[GroupMethod] = Registry("neuron / channel method", builtins=("secateur.structured.l0",))


def group_method(name: str, *, needs: tuple[str, ...] = (),
                 learn: Callable[..., Learned] | None = None) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: register a score function as a neuron / channel method."""

    def decorate(score: ScoreFn) -> ScoreFn:
        doc = (score.__doc__ or "").strip().splitlines()[0] if score.__doc__ else ""
        GROUP_METHODS.add(name, GroupMethod(name, score, doc, frozenset(needs), learn), doc)
        return score

    return decorate


def _weight_of(model: nn.Module, member: Member) -> torch.Tensor | None:
    """The weight slice a member owns, as [positions, rest] (None when it has none).

    A ``param`` member counts when its tensor is a weight (2 dims or more: a functional
    linear / conv / embedding table), not a per-channel vector (bias, layer scale).
    """
    if member.role == "param":
        return _param_slices(model, member.module)
    m = model.get_submodule(member.module)
    view = weight_view(m, member.role)  # packed attention in_proj, Conv1D (weight stored (in, out))
    if view is not None:
        return view.reshape(view.shape[0], -1)
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    w = w.detach()
    groups = getattr(m, "groups", 1)
    if member.role == "in" and groups != 1:
        if w.shape[1] == 1:
            return None  # depthwise conv inputs are counted with its outputs
        # input channel (g, j) meets column j of group g's output filters
        per = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1).transpose(1, 2)
        return per.reshape(groups * w.shape[1], -1)
    if member.role == "in":
        return w.transpose(0, 1).reshape(w.shape[1], -1)
    return w.reshape(w.shape[0], -1)


def _param_slices(model: nn.Module, key: str) -> torch.Tensor | None:
    found = split_param_key(key)
    if found is None:
        return None
    owner, _, name = found[0].rpartition(".")
    t = getattr(model.get_submodule(owner), name, None)
    if not isinstance(t, torch.Tensor) or t.dim() < 2:
        return None
    return t.detach().movedim(found[1], 0).reshape(t.shape[found[1]], -1)


def _accumulate(group: Group, per_member: Callable[[Member], torch.Tensor | None]) -> torch.Tensor:
    scores = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        if member.role == SIZE_ROLE:
            continue  # a split's part: positions only, no weights
        values = per_member(member)
        if values is not None:
            scores.index_add_(0, member.channel, values[member.positions.to(values.device)].double().cpu())
    return scores


def _norm_scores(model: nn.Module, graph: DependencyGraph, power: int) -> Scores:
    def per(member: Member) -> torch.Tensor | None:
        if member.role == "norm":
            return None
        w = _weight_of(model, member)
        return None if w is None else (w.abs() if power == 1 else w.pow(2)).sum(1)

    out = {g.name: _accumulate(g, per) for g in graph.groups}
    return out if power == 1 else {k: v.sqrt() for k, v in out.items()}


@group_method("l1")
def l1(model: nn.Module, graph: DependencyGraph, **_: Any) -> Scores:
    """L1 norm of every weight attached to the channel, summed over the group."""
    return _norm_scores(model, graph, 1)


@group_method("l2")
def l2(model: nn.Module, graph: DependencyGraph, **_: Any) -> Scores:
    """L2 norm of every weight attached to the channel, over the whole group."""
    return _norm_scores(model, graph, 2)


@group_method("bn-scale")
def bn_scale(model: nn.Module, graph: DependencyGraph, **_: Any) -> Scores:
    """|gamma| of the group's norm layers (network slimming); l2 for groups without one."""
    fallback = _norm_scores(model, graph, 2)

    def per(member: Member) -> torch.Tensor | None:
        w = getattr(model.get_submodule(member.module), "weight", None)
        return w.detach().abs() if member.role == "norm" and isinstance(w, torch.Tensor) else None

    out = {}
    for g in graph.groups:
        has_norm = any(m.role == "norm" and getattr(model.get_submodule(m.module), "weight", None) is not None
                       for m in g.members)
        out[g.name] = _accumulate(g, per) if has_norm else fallback[g.name]
    return out


@group_method("random", needs=("generator",))
def random(model: nn.Module, graph: DependencyGraph, *, generator: torch.Generator | None = None,
           **_: Any) -> Scores:
    """Uniform random scores (the baseline every criterion must beat)."""
    return {g.name: torch.rand(g.size, generator=generator, dtype=torch.float64) for g in graph.groups}


@group_method("taylor", needs=("batches",))
def taylor(model: nn.Module, graph: DependencyGraph, *, batches: Iterable | None = None, **_: Any) -> Scores:
    """First-order Taylor |sum(w * grad)| per channel, accumulated over ``batches``."""
    if batches is None:
        raise ConfigError("criterion 'taylor' needs batches=[(inputs, targets), ...] to compute gradients")
    members = [m for g in graph.groups for m in g.members if m.role in ("out", "norm")]
    params = _taylor_params(model, members)
    acc = {key: torch.zeros(p.shape[0], dtype=torch.float64) for key, p in params.items()}
    was_training, seen = model.training, 0
    model.eval()
    try:
        for batch in batches:
            _taylor_step(model, batch, params, acc)
            seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise ConfigError("criterion 'taylor' got no batches; pass at least one (inputs, targets) batch")

    def per(member: Member) -> torch.Tensor | None:
        keys = [k for k in acc if k[0] == member.module] if member.role != "in" else []
        return torch.stack([acc[k] for k in keys]).sum(0) if keys else None

    return {g.name: _accumulate(g, per) for g in graph.groups}


@group_method("fpgm")
def fpgm(model: nn.Module, graph: DependencyGraph, **_: Any) -> Scores:
    """He et al. 2019 (FPGM): a channel's summed distance to the layer's other filters; nearest the median go first."""
    def per(member: Member) -> torch.Tensor | None:
        w = _weight_of(model, member) if member.role == "out" else None
        return None if w is None else torch.cdist(w.double()[None], w.double()[None])[0].sum(1)

    return {g.name: _accumulate(g, per) for g in graph.groups}


def _taylor_params(model: nn.Module, members: list[Member]) -> dict[tuple[str, str], torch.Tensor]:
    params: dict[tuple[str, str], torch.Tensor] = {}
    for member in members:
        if split_param_key(member.module) is not None:
            continue  # a single parameter's dim: not scored by taylor
        m = model.get_submodule(member.module)
        if weight_view(m, "out") is not None:
            continue  # weights not stored (out, in): not scored by taylor
        for pname in ("weight", "bias"):
            p = getattr(m, pname, None)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                params[(member.module, pname)] = p
    return params


def _taylor_step(model: nn.Module, batch: Any, params: dict, acc: dict) -> None:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise ConfigError("taylor batches must be (inputs, targets) pairs")
    x, y = batch[0], batch[1]
    loss = F.cross_entropy(model(x), y)
    keys = list(params)
    grads = torch.autograd.grad(loss, [params[k] for k in keys], allow_unused=True)
    for key, g in zip(keys, grads):
        if g is not None:
            prod = (params[key].detach() * g).reshape(g.shape[0], -1).sum(1)
            acc[key] += prod.abs().double().cpu()
