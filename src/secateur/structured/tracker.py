"""The state of a dependency analysis and its result, shared by :mod:`.graph` and :mod:`.propagate`.

:class:`Tracker` holds the union-find of channel tags and the per-layer tag records that the
label propagation (:mod:`secateur.structured.propagate`) fills in; :func:`build_groups` turns
them into the :class:`DependencyGraph` of :class:`Group` s that :func:`secateur.structured.analyse`
returns. This module imports neither of its users, so both import it at module level.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import torch

from secateur.errors import UnsupportedModelError

Labels: TypeAlias = tuple[int, torch.Tensor]  # (labelled dim, tag per position along it)
# What a node's output carries: Labels for a tensor, a (nested) list for a tuple of tensors, or None.
LabelTree: TypeAlias = "Labels | list[LabelTree] | None"
# Tracker.snapshot(): union-find parents and locks, records, producers, notes, visited modules,
# what was kept where, parameters read outside the ops that follow them.
TrackerState: TypeAlias = tuple[list[int], list[bool], dict[tuple[str, str], torch.Tensor],
                                dict[str, torch.Tensor], list[str], set[str],
                                list[tuple[str, str, str, torch.Tensor]], set[str]]

PARAM_SEP = "@"


def param_key(target: str, dim: int) -> str:
    """The record / plan key of dim ``dim`` of the parameter or buffer at ``target`` ("blocks.0.gamma@0")."""
    return f"{target}{PARAM_SEP}{dim}"


def split_param_key(key: str) -> tuple[str, int] | None:
    """``(parameter path, dim)`` of a :func:`param_key`, or None for a module path."""
    target, sep, dim = key.rpartition(PARAM_SEP)
    return (target, int(dim)) if sep and dim.isdigit() else None


@dataclass
class Member:
    """One layer's share of a group: positions along its ``role`` dim and their channel index."""

    module: str
    # "out" (conv/linear outputs), "in" (conv/linear inputs), "norm" (per-channel norm params),
    # "param" (a dim of one parameter / buffer that ``module`` names as a :func:`param_key`)
    role: str
    positions: torch.Tensor
    channel: torch.Tensor  # for each position, the index of its coupled channel in the group


@dataclass
class Group:
    """Coupled channels pruned as a unit; ``size`` is the number of prunable channels."""

    name: str
    size: int
    members: list[Member]

    def modules(self, role: str | None = None) -> list[str]:
        """Member module paths (optionally of one role), in trace order, without repeats."""
        return list(dict.fromkeys(m.module for m in self.members if role in (None, m.role)))


@dataclass(frozen=True)
class Unfollowed:
    """An op the analysis could not follow: what it is, where, and how many coupled channels it kept."""

    op: str  # e.g. "call_function 'erf'", "call_module 'MyNorm'"
    path: str  # the module path it sits in ("<root>" for the model's own forward)
    channels: int  # prunable coupled channels kept because they reach it
    why: str = ""

    def __str__(self) -> str:
        return f"{self.op} in {self.path!r}: kept {self.channels} channels ({self.why})"


@dataclass
class DependencyGraph:
    """The result of :func:`analyse`: prunable groups, full dim sizes and why channels were locked.

    ``unfollowed`` lists, per op the analysis could not follow, the channels it kept (the
    structured form of the ``notes`` about them).
    """

    groups: list[Group]
    dims: dict[tuple[str, str], int]
    notes: list[str] = field(default_factory=list)
    unfollowed: list[Unfollowed] = field(default_factory=list)

    def group(self, name: str) -> Group:
        """The group called ``name`` (its first producing layer)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)


class _UnionFind:
    """Tags with a lock flag per class; merging a locked class locks the result."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.locked: list[bool] = []

    def new(self, n: int, locked: bool = False) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.locked.extend([locked] * n)
        return torch.arange(start, start + n)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.locked[ra] = self.locked[ra] or self.locked[rb]

    def union_all(self, tags: torch.Tensor) -> None:
        flat = tags.reshape(-1).tolist()
        for t in flat[1:]:
            self.union(flat[0], t)

    def union_rows(self, rows: torch.Tensor) -> None:
        """Merge the tags of every row of a 2-D tensor."""
        for row in rows.tolist():
            for t in row[1:]:
                self.union(row[0], t)

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def lock(self, tags: torch.Tensor) -> None:
        for t in set(tags.reshape(-1).tolist()):
            self.locked[self.find(t)] = True

    def is_locked(self, t: int) -> bool:
        return self.locked[self.find(t)]


class Tracker:
    """Mutable state of one analysis: union-find, per-layer tag records, notes."""

    def __init__(self, ignore: Sequence[str] = (), strict: bool = False,
                 whole_groups: frozenset[str] = frozenset(), attention: str = "heads") -> None:
        self.uf = _UnionFind()
        self.attention = attention  # an ATTENTION_UNITS name: what one channel of an attention layer is
        self.whole_groups = whole_groups  # grouped convs that lose whole groups (not channels in each)
        self.grouped: set[str] = set()  # grouped convs that lose the same channels in every group
        self.strict = strict
        self.ignore = tuple(ignore)
        self.records: dict[tuple[str, str], torch.Tensor] = {}
        self.producers: dict[str, torch.Tensor] = {}
        self.notes: list[str] = []
        self.visited: set[str] = set()
        self.kept: list[tuple[str, str, str, torch.Tensor]] = []  # (op, module path, why, tags)
        self.escaped: set[str] = set()  # parameters read by ops that do not follow their channels

    def snapshot(self) -> TrackerState:
        """Copy of the mutable state, to retry a failed propagation from scratch."""
        return (list(self.uf.parent), list(self.uf.locked), dict(self.records), dict(self.producers),
                list(self.notes), set(self.visited), list(self.kept), set(self.escaped))

    def restore(self, state: TrackerState) -> None:
        parent, locked, records, producers, notes, visited, kept, escaped = state
        self.uf.parent, self.uf.locked = list(parent), list(locked)
        self.records, self.producers = dict(records), dict(producers)
        self.notes, self.visited = list(notes), set(visited)
        self.kept, self.escaped = list(kept), set(escaped)

    def produce(self, path: str, n: int) -> torch.Tensor:
        """Output tags of layer ``path`` (the same tags every time the layer is called)."""
        if path not in self.producers or len(self.producers[path]) != n:
            self.producers[path] = self.uf.new(n)
        return self.producers[path]

    def record(self, path: str, role: str, tags: torch.Tensor) -> None:
        """Remember which tags sit at each position of ``path``'s ``role`` dim."""
        key = (path, role)
        old = self.records.get(key)
        if old is None:
            self.records[key] = tags.clone()
        elif old.shape == tags.shape:
            self.uf.union_pairs(old, tags)
        else:
            self.lock_labels((0, old))
            self.lock_labels((0, tags))

    def lock_labels(self, labels: LabelTree, why: str | None = None,
                    where: tuple[str, str] | None = None) -> None:
        """Keep every channel in ``labels`` (a Labels, a list of them, or None).

        ``where`` (op, module path) names an op the analysis does not follow; it is reported in
        :attr:`DependencyGraph.unfollowed` with the number of channels it kept.
        """
        if labels is None:
            return
        if isinstance(labels, list):
            for item in labels:
                self.lock_labels(item, why, where)
            return
        if why and not all(self.uf.is_locked(t) for t in labels[1].tolist()):
            if self.strict:
                raise UnsupportedModelError(f"strict structured pruning: {why}; the model is unchanged")
            self.notes.append(why)
        if where is not None:
            self.kept.append((*where, why or "", labels[1].reshape(-1).clone()))
        self.uf.lock(labels[1])

    def collapsed_grouped(self) -> frozenset[str]:
        """Grouped convs whose output channels all became one coupled channel (so none can go)."""
        return frozenset(path for path in self.grouped
                         if len({self.uf.find(t) for t in self.records[(path, "out")].tolist()}) <= 1)

    def finish(self) -> DependencyGraph:
        """Lock ignored layers and build the groups."""
        for (path, _), tags in self.records.items():
            param = split_param_key(path)
            names = (path,) if param is None else (path, param[0], param[0].rpartition(".")[0])
            if any(fnmatch.fnmatchcase(name, pat) for name in names for pat in self.ignore):
                self.uf.lock(tags)
        return build_groups(self)


def build_groups(tr: Tracker) -> DependencyGraph:
    """Group the unlocked coupled channels by the set of layers they touch.

    Vectorised with numpy (tiny single-threaded index ops; torch's thread pool only adds
    latency): a channel's signature is a random 64-bit hash summed over the layers it touches.
    """
    uf = tr.uf
    n_tags = len(uf.parent)
    roots = np.fromiter((uf.find(t) for t in range(n_tags)), dtype=np.int64, count=n_tags)
    locked = np.asarray(uf.locked, dtype=bool)[roots]
    keys = list(tr.records)
    per_key, pair_roots, pair_keys = [], [], []
    for ki, key in enumerate(keys):
        tags = tr.records[key].numpy()
        free = ~locked[tags]
        pos, r = np.flatnonzero(free), roots[tags[free]]
        per_key.append((pos, r))
        uniq = np.unique(r)
        pair_roots.append(uniq)
        pair_keys.append(np.full(len(uniq), ki, dtype=np.int64))
    if not keys:
        return DependencyGraph(groups=[], dims={}, notes=list(dict.fromkeys(tr.notes)))
    unfollowed = _unfollowed(tr, roots, keys)
    pr, pk = np.concatenate(pair_roots), np.concatenate(pair_keys)
    salt = np.random.default_rng(0).integers(1, 2**62, size=len(keys), dtype=np.int64)
    sig = np.zeros(n_tags, dtype=np.int64)
    np.add.at(sig, pr, salt[pk])
    live = np.unique(pr)
    _, group_idx = np.unique(sig[live], return_inverse=True)
    group_of = np.full(n_tags, -1, dtype=np.int64)
    group_of[live] = group_idx
    groups = _make_groups(keys, per_key, group_of, pr, pk, set(tr.producers))
    dims = {key: len(tags) for key, tags in tr.records.items()}
    return DependencyGraph(groups=groups, dims=dims, notes=list(dict.fromkeys(tr.notes)), unfollowed=unfollowed)


def _unfollowed(tr: Tracker, roots: np.ndarray, keys: list) -> list[Unfollowed]:
    """Per (op, path): the coupled channels of layers (records) that reach it, counted once each."""
    in_layers = np.zeros(len(roots), dtype=bool)
    for key in keys:
        in_layers[roots[tr.records[key].numpy()]] = True
    found: dict[tuple[str, str], set[int]] = {}
    whys: dict[tuple[str, str], str] = {}
    for op, path, why, tags in tr.kept:
        r = roots[tags.numpy()]
        found.setdefault((op, path), set()).update(np.unique(r[in_layers[r]]).tolist())
        whys.setdefault((op, path), why)
    return [Unfollowed(op, path, len(chans), whys.get((op, path), "")) for (op, path), chans in found.items()
            if chans]


def _make_groups(keys: list, per_key: list, group_of: np.ndarray, pr: np.ndarray, pk: np.ndarray,
                 producers: set[str]) -> list[Group]:
    """Groups in trace order; channels numbered by first position in the group's first layer."""
    n_groups = int(group_of.max()) + 1 if len(group_of) else 0
    members: list[list[Member]] = [[] for _ in range(n_groups)]
    sizes = np.bincount(group_of[np.unique(pr)], minlength=n_groups)
    channel = np.full(len(group_of), -1, dtype=np.int64)
    seen = np.zeros(n_groups, dtype=np.int64)
    first_key = np.full(n_groups, -1, dtype=np.int64)
    for ki, (pos, r) in enumerate(per_key):
        g = group_of[r]
        for gi in np.unique(g).tolist():
            sel = g == gi
            rr = r[sel]
            new = rr[channel[rr] < 0]
            if len(new):
                _, first = np.unique(new, return_index=True)
                fresh = new[np.sort(first)]
                channel[fresh] = seen[gi] + np.arange(len(fresh))
                seen[gi] += len(fresh)
            if first_key[gi] < 0:
                first_key[gi] = ki
            members[gi].append(Member(keys[ki][0], keys[ki][1], torch.from_numpy(pos[sel]),
                                      torch.from_numpy(channel[rr])))
    groups: list[Group] = []
    named: dict[str, int] = {}
    for gi in np.argsort(first_key, kind="stable").tolist():
        outs = [m.module for m in members[gi] if m.role == "out" or (m.role == "param" and m.module in producers)]
        if outs:  # a layer whose outputs fall into several groups (split parts) names them "conv", "conv#1" ...
            seen_before = named.get(outs[0], 0)
            named[outs[0]] = seen_before + 1
            name = outs[0] if not seen_before else f"{outs[0]}#{seen_before}"
            groups.append(Group(name=name, size=int(sizes[gi]), members=members[gi]))
    return groups
