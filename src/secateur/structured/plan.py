"""Pruning plans: which output / input indices of which layer survive.

A :class:`Plan` is plain data (JSON-serialisable, no tensors) so it can be saved next to the
weights and re-applied to a freshly built model. :func:`plan_pruning` turns a
:class:`DependencyGraph` plus a method into a plan:

- ``scope="local"``: every group loses ``ratio`` of its channels (``ratios`` overrides it
  for groups whose producing conv / linear layers match an fnmatch pattern, first match wins);
- ``scope="global"``: scores are divided by their group's mean and ranked across groups, so
  the least important ``ratio`` of all channels go, wherever they are;
- every group keeps at least ``min_channels`` channels and a multiple of ``round_to``
  (rounded up, never more than it has), and never fewer than one.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.search.pruner import SCOPES
from secateur.structured.graph import DependencyGraph, Group
from secateur.structured.importance import GROUP_METHODS

PLAN_FORMAT = "secateur-structured-plan/1"


@dataclass
class Plan:
    """Kept indices per layer: ``keep_out`` (output channels / norm channels), ``keep_in`` (inputs)."""

    keep_out: dict[str, list[int]] = field(default_factory=dict)
    keep_in: dict[str, list[int]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-ready dict; index lists are stored as [start, stop) runs."""
        return {"format": PLAN_FORMAT,
                "keep_out": {k: _runs(v) for k, v in self.keep_out.items()},
                "keep_in": {k: _runs(v) for k, v in self.keep_in.items()},
                "info": self.info}

    @classmethod
    def from_json(cls, data: Mapping) -> Plan:
        """Inverse of :meth:`to_json`; malformed data raises :class:`ConfigError`."""
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise ConfigError(f"not a structured pruning plan (expected format {PLAN_FORMAT!r})")
        try:
            return cls(keep_out={str(k): _unruns(v) for k, v in data["keep_out"].items()},
                       keep_in={str(k): _unruns(v) for k, v in data["keep_in"].items()},
                       info=dict(data.get("info", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"malformed structured pruning plan: {err}") from None


def _runs(idx: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in idx:
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def _unruns(runs: Iterable) -> list[int]:
    out: list[int] = []
    for start, stop in runs:
        out.extend(range(int(start), int(stop)))
    return out


def _check_ratio(r: float, what: str) -> float:
    if not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
        raise ConfigError(f"{what} must be a fraction in [0, 1), got {r!r}")
    return float(r)


def _group_ratio(g: Group, ratios: Mapping[str, float]) -> float | None:
    """The override for ``g`` (first pattern matching a layer that produces its channels), or None."""
    for pattern, r in ratios.items():
        if any(fnmatch.fnmatchcase(m, pattern) for m in g.modules("out")):
            return _check_ratio(r, f"ratio for {pattern!r}")
    return None


def n_keep(size: int, ratio: float, min_channels: int, round_to: int) -> int:
    """Channels a group of ``size`` keeps after removing ``ratio`` of them."""
    keep = size - math.floor(size * ratio + 1e-9)
    keep = max(keep, min(min_channels, size), 1)
    if round_to > 1:
        keep = min(size, math.ceil(keep / round_to) * round_to)
    return keep


def check_counts(min_channels: int, round_to: int) -> None:
    """ConfigError unless every group may keep at least one channel, in multiples of at least one."""
    if int(min_channels) < 1 or int(round_to) < 1:
        raise ConfigError(f"min channels and round-to must be >= 1, got {min_channels} and {round_to}")


def plan_pruning(model: nn.Module, graph: DependencyGraph, *, ratio: float, method: str = "l1",
                 scope: str = "local", min_channels: int = 1, round_to: int = 1,
                 ratios: Mapping[str, float] | None = None, batches: Iterable | None = None,
                 generator: torch.Generator | None = None) -> Plan:
    """Rank coupled channels with ``method`` (a :data:`GROUP_METHODS` name) and decide which ones every group keeps."""
    ratio = _check_ratio(ratio, "ratio")
    SCOPES.get(scope)
    check_counts(min_channels, round_to)
    scores = GROUP_METHODS.get(method)(model, graph, batches=batches, generator=generator)
    overrides = {g.name: _group_ratio(g, ratios or {}) for g in graph.groups}
    group_ratios = {name: ratio if r is None else r for name, r in overrides.items()}
    counts = {g.name: n_keep(g.size, group_ratios[g.name], min_channels, round_to) for g in graph.groups}
    if scope == "global":
        free = [g for g in graph.groups if overrides[g.name] is None]
        counts.update(global_counts(free, scores, ratio, min_channels, round_to))
    plan = build_plan(graph, {g.name: top_channels(scores[g.name], counts[g.name]) for g in graph.groups})
    plan.info = {"method": method, "ratio": ratio, "scope": scope, "min_channels": int(min_channels),
                 "round_to": int(round_to), "groups": {g.name: [counts[g.name], g.size] for g in graph.groups}}
    return plan


def top_channels(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-vector of the ``k`` highest scores (ties broken by index)."""
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[torch.argsort(scores, descending=True, stable=True)[:k]] = True
    return keep


def global_counts(groups: list[Group], scores: Mapping[str, torch.Tensor], ratio: float,
                   min_channels: int, round_to: int) -> dict[str, int]:
    """Per-group kept counts when the lowest mean-normalised scores go first, across groups."""
    if not groups:
        return {}
    normed = [scores[g.name] / scores[g.name].mean().clamp_min(1e-12) for g in groups]
    owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
    order = torch.argsort(torch.cat(normed), stable=True).tolist()
    left = [g.size for g in groups]
    floor = [max(min(min_channels, g.size), 1) for g in groups]
    budget = math.floor(sum(left) * ratio + 1e-9)
    owners = owner.tolist()
    for idx in order:
        if budget <= 0:
            break
        i = owners[idx]
        if left[i] > floor[i]:
            left[i] -= 1
            budget -= 1
    return {g.name: n_keep(g.size, 1 - left[i] / g.size, min_channels, round_to) for i, g in enumerate(groups)}


def build_plan(graph: DependencyGraph, kept: Mapping[str, torch.Tensor]) -> Plan:
    """Turn per-group keep-vectors (bool per coupled channel) into per-layer kept indices."""
    removed: dict[tuple[str, str], set[int]] = {}
    for g in graph.groups:
        keep = kept[g.name]
        for m in g.members:
            gone = m.positions[~keep[m.channel]].tolist()
            if gone:
                removed.setdefault((m.module, m.role), set()).update(gone)
    plan = Plan()
    for (module, role), dropped in removed.items():
        idx = [i for i in range(graph.dims[(module, role)]) if i not in dropped]
        target = plan.keep_in if role == "in" else plan.keep_out
        target[module] = idx
    return plan


def compose(first: Plan, second: Plan) -> Plan:
    """One plan equivalent to applying ``first``, then ``second`` (indexed into ``first``'s result).

    Iterative structured pruning prunes an already pruned model; composing keeps a single
    plan relative to the original architecture, so the result rebuilds in one step.
    """
    def merged(a: Mapping[str, list[int]], b: Mapping[str, list[int]]) -> dict[str, list[int]]:
        out = {name: list(idx) for name, idx in a.items()}
        for name, idx in b.items():
            out[name] = [a[name][i] for i in idx] if name in a else list(idx)
        return out

    return Plan(merged(first.keep_out, second.keep_out), merged(first.keep_in, second.keep_in),
                {**first.info, **second.info})


def relative(target: Plan, current: Plan) -> Plan:
    """The plan that takes a model pruned to ``current`` to ``target`` (both over the original).

    The inverse of :func:`compose`: ``compose(current, relative(target, current))`` keeps what
    ``target`` keeps. Raises :class:`ConfigError` if ``target`` keeps a channel ``current``
    already removed (a pruned model cannot grow back).
    """
    def step(now: Mapping[str, list[int]], goal: Mapping[str, list[int]], what: str) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name in sorted(set(now) | set(goal)):
            if name not in goal:
                raise ConfigError(f"plan keeps every {what} of {name!r}, which this model already pruned")
            if name not in now:
                out[name] = list(goal[name])
                continue
            where = {index: pos for pos, index in enumerate(now[name])}
            if any(i not in where for i in goal[name]):
                raise ConfigError(f"plan keeps {what}s of {name!r} that this model already removed")
            idx = [where[i] for i in goal[name]]
            if idx != list(range(len(now[name]))):
                out[name] = idx
        return out

    return Plan(step(current.keep_out, target.keep_out, "output"), step(current.keep_in, target.keep_in, "input"),
                dict(target.info))
