"""Dependency analysis: which channels of which layers must be pruned together.

The model is traced with ``torch.fx`` and run once on an example input. Every tensor in the
trace carries *channel labels*: one labelled dimension and, for each position along it, a tag.
Layers that create channels (conv / linear outputs) create fresh tags; ops that merely move
channels (BatchNorm, activations, pooling, flatten, permute, concatenation) move the tags;
ops that couple channels (residual adds, squeeze-excitation multiplies, grouped convolutions,
GroupNorm groups) merge tags in a union-find. After the trace each union-find class is one
*coupled channel*: the set of (layer, position) pairs that are removed together.

Anything the analysis cannot follow (an unknown op, a hard-coded ``view`` size, a channel
slice, attention, LayerNorm statistics over channels, the model output) *locks* the channels
that reach it: they are kept, so pruning never produces a broken model. A submodule fx cannot
trace (data-dependent control flow) becomes an opaque leaf whose channels are kept; a model
whose own ``forward`` cannot be traced raises :class:`UnsupportedModelError` naming the op and
the module path.

Coupled channels with the same set of member layers form a :class:`Group`; a group is
pruned as a unit by :func:`secateur.structured.plan_pruning`.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from secateur.errors import UnsupportedModelError
from secateur.structured.trace import trace_model, trace_tolerant

Labels = tuple[int, torch.Tensor]  # (labelled dim, tag per position along it)


@dataclass
class Member:
    """One layer's share of a group: positions along its ``role`` dim and their channel index."""

    module: str
    role: str  # "out" (conv/linear outputs), "in" (conv/linear inputs), "norm" (per-channel params)
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


@dataclass
class DependencyGraph:
    """The result of :func:`analyse`: prunable groups, full dim sizes and why channels were locked."""

    groups: list[Group]
    dims: dict[tuple[str, str], int]
    notes: list[str] = field(default_factory=list)

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

    def __init__(self, ignore: Sequence[str] = (), strict: bool = False) -> None:
        self.uf = _UnionFind()
        self.strict = strict
        self.ignore = tuple(ignore)
        self.records: dict[tuple[str, str], torch.Tensor] = {}
        self.producers: dict[str, torch.Tensor] = {}
        self.notes: list[str] = []
        self.visited: set[str] = set()

    def snapshot(self) -> tuple:
        """Copy of the mutable state, to retry a failed propagation from scratch."""
        return (list(self.uf.parent), list(self.uf.locked), dict(self.records), dict(self.producers),
                list(self.notes), set(self.visited))

    def restore(self, state: tuple) -> None:
        parent, locked, records, producers, notes, visited = state
        self.uf.parent, self.uf.locked = list(parent), list(locked)
        self.records, self.producers = dict(records), dict(producers)
        self.notes, self.visited = list(notes), set(visited)

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

    def lock_labels(self, labels: object, why: str | None = None) -> None:
        """Keep every channel in ``labels`` (a Labels, a list of them, or None)."""
        if labels is None:
            return
        if isinstance(labels, list):
            for item in labels:
                self.lock_labels(item, why)
            return
        if why and not all(self.uf.is_locked(t) for t in labels[1].tolist()):
            if self.strict:
                raise UnsupportedModelError(f"strict structured pruning: {why}; the model is unchanged")
            self.notes.append(why)
        self.uf.lock(labels[1])

    def finish(self) -> DependencyGraph:
        """Lock ignored layers and build the groups."""
        for (path, _), tags in self.records.items():
            if any(fnmatch.fnmatchcase(path, pat) for pat in self.ignore):
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
    pr, pk = np.concatenate(pair_roots), np.concatenate(pair_keys)
    salt = np.random.default_rng(0).integers(1, 2**62, size=len(keys), dtype=np.int64)
    sig = np.zeros(n_tags, dtype=np.int64)
    np.add.at(sig, pr, salt[pk])
    live = np.unique(pr)
    _, group_idx = np.unique(sig[live], return_inverse=True)
    group_of = np.full(n_tags, -1, dtype=np.int64)
    group_of[live] = group_idx
    groups = _make_groups(keys, per_key, group_of, pr, pk)
    dims = {key: len(tags) for key, tags in tr.records.items()}
    return DependencyGraph(groups=groups, dims=dims, notes=list(dict.fromkeys(tr.notes)))


def _make_groups(keys: list, per_key: list, group_of: np.ndarray, pr: np.ndarray, pk: np.ndarray) -> list[Group]:
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
    groups = []
    for gi in np.argsort(first_key, kind="stable").tolist():
        outs = [m.module for m in members[gi] if m.role == "out"]
        if outs:
            groups.append(Group(name=outs[0], size=int(sizes[gi]), members=members[gi]))
    return groups


def analyse(model: nn.Module, example_input: torch.Tensor, *, ignore: Sequence[str] = (),
            strict: bool = False) -> DependencyGraph:
    """Trace ``model`` on ``example_input`` into groups of coupled channels.

    ``ignore`` holds module paths (fnmatch patterns such as ``"features.*"``) whose channels
    are all kept. The model's outputs are always kept. The model is not modified. A submodule
    fx cannot trace is kept whole (noted in ``graph.notes``). Raises
    :class:`UnsupportedModelError` naming the op and module path when the model's own forward
    cannot be traced, and with ``strict`` at any tracing failure and at the first op whose
    channels it would otherwise keep.
    """
    from secateur.structured.propagate import propagate

    if not isinstance(example_input, torch.Tensor):
        raise UnsupportedModelError("example_input must be a single tensor batch, e.g. torch.randn(1, 3, 224, 224)")
    tracker = Tracker(ignore, strict)
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        gm, opaque = (trace_model(model), []) if strict else trace_tolerant(model)
        tracker.notes.extend(f"kept {path} whole: fx cannot trace inside it" for path, _ in opaque)
        propagate(gm, tracker, example_input)
    finally:
        for m, mode in was_training.items():
            m.training = mode
    tracker.visited.update(_attr_owners(gm))
    _train_only_branches(model, tracker, example_input, [path for path, _ in opaque])
    _lock_shared_parameters(gm, tracker)
    return tracker.finish()


def _attr_owners(gm: fx.GraphModule) -> set[str]:
    """Modules whose tensors the graph reads directly (``get_attr``)."""
    return {n.target.rsplit(".", 1)[0] if "." in n.target else "" for n in gm.graph.nodes if n.op == "get_attr"}


def _train_only_branches(model: nn.Module, tracker: Tracker, example_input: torch.Tensor,
                         opaque: Sequence[str] = ()) -> None:
    """Also trace training mode when some layers only run there (auxiliary classifiers).

    The training-mode run uses meta tensors, so BatchNorm statistics are not touched; should
    that fail, it runs on a copy of the model.
    """
    from secateur.structured.propagate import propagate

    visited = tracker.visited
    unused = [p for p, m in model.named_modules()
              if any(True for _ in m.parameters(recurse=False))
              and not any(p == v or (v and p.startswith(v + ".")) for v in visited)]
    if not unused:
        return
    batch = example_input if example_input.shape[0] > 1 else example_input.repeat(2, *[1] * (example_input.dim() - 1))
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        gm = trace_model(model, opaque)
        propagate(gm, tracker, batch, real_ok=False)
        return
    except UnsupportedModelError:
        pass
    finally:
        for m, mode in modes.items():
            m.training = mode
    twin = copy.deepcopy(model).train()
    propagate(trace_model(twin, opaque), tracker, batch)


def _lock_shared_parameters(gm: fx.GraphModule, tracker: Tracker) -> None:
    """Layers whose parameters are also read directly (tied weights) keep all channels."""
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        owner = node.target.rsplit(".", 1)[0] if "." in node.target else ""
        for (path, _), tags in tracker.records.items():
            if path == owner:
                tracker.lock_labels((0, tags), f"parameters of {path} are used directly by the model")
