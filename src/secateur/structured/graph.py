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
from collections.abc import Sequence

import torch
from torch import fx, nn

from secateur.errors import UnsupportedModelError
from secateur.structured.attention import ATTENTION_UNITS, record_embeddings
from secateur.structured.hf_hidden import record_stream
from secateur.structured.propagate import propagate
from secateur.structured.trace import CONCRETE_KEY, trace_model, trace_tolerant
from secateur.structured.tracker import (
    PARAM_SEP,
    DependencyGraph,
    Group,
    Labels,
    Member,
    Tracker,
    Unfollowed,
    build_groups,
)

# The result types live in secateur.structured.tracker (so that propagate need not import this
# module); they are re-exported here, their public home.
__all__ = ["DependencyGraph", "Group", "Labels", "Member", "Tracker", "Unfollowed", "analyse", "build_groups",
           "unfollowed_ops"]


def analyse(model: nn.Module, example_input: torch.Tensor, *, ignore: Sequence[str] = (),
            strict: bool = False, attention: str = "heads") -> DependencyGraph:
    """Trace ``model`` on ``example_input`` into groups of coupled channels.

    ``ignore`` holds module paths (fnmatch patterns such as ``"features.*"``) whose channels
    are all kept. The model's outputs are always kept. The model is not modified. A submodule
    fx cannot trace is kept whole (noted in ``graph.notes``). Raises
    :class:`UnsupportedModelError` naming the op and module path when the model's own forward
    cannot be traced, and with ``strict`` at any tracing failure and at the first op whose
    channels it would otherwise keep.

    A grouped convolution keeps its groups and loses the same channels in every group; where
    that couples all its channels into one (a GroupNorm over the same groups follows), the
    analysis is redone with that convolution losing whole groups instead.
    """
    if not isinstance(example_input, torch.Tensor):
        raise UnsupportedModelError("example_input must be a single tensor batch, e.g. torch.randn(1, 3, 224, 224)")
    ATTENTION_UNITS.get(attention)  # an unknown name fails here, in one line
    tracker = _traced(model, example_input, Tracker(ignore, strict, attention=attention))
    collapsed = tracker.collapsed_grouped()
    if collapsed:
        tracker = _traced(model, example_input, Tracker(ignore, strict, whole_groups=collapsed, attention=attention))
    return tracker.finish()


def unfollowed_ops(model: nn.Module, example_input: torch.Tensor) -> list[Unfollowed]:
    """The ops of ``model`` the analysis cannot follow, with the channels each keeps ([] if it cannot trace)."""
    try:
        return analyse(model, example_input).unfollowed
    except UnsupportedModelError:
        return []


def _traced(model: nn.Module, example_input: torch.Tensor, tracker: Tracker) -> Tracker:
    """``tracker`` filled by tracing ``model`` (eval mode, then training-only branches)."""
    strict = tracker.strict
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        try:
            traces = [(trace_model(model), [])] if strict else trace_tolerant(model, example_input)
        except UnsupportedModelError as err:  # e.g. Hugging Face models: their declared layers only
            if strict or not record_stream(model, tracker, str(err).split(";")[0]):
                raise
            return tracker
        gm, opaque = _deepest(model, traces, tracker, example_input)
    finally:
        for m, mode in was_training.items():
            m.training = mode
    tracker.visited.update(_attr_owners(gm))
    _train_only_branches(model, tracker, example_input, [path for path, _ in opaque], gm.meta.get(CONCRETE_KEY, False))
    _lock_shared_parameters(gm, tracker)
    return tracker


def _deepest(model: nn.Module, traces: list[tuple[fx.GraphModule, list[tuple[str, str]]]], tracker: Tracker,
             example_input: torch.Tensor) -> tuple[fx.GraphModule, list[tuple[str, str]]]:
    """Propagate each trace into ``tracker`` and keep the one that leaves the most output channels free."""
    start, best = tracker.snapshot(), None
    for index, (gm, opaque) in enumerate(traces):
        tracker.restore(start)
        tracker.notes.extend(f"kept {path} whole: fx cannot trace inside it" for path, _ in opaque)
        try:
            propagate(gm, tracker, example_input)
        except UnsupportedModelError:
            if index == 0:
                raise
            continue  # a retry that cannot be followed: the plain trace stands
        record_embeddings(model, tracker)
        free = _free_outputs(tracker) if len(traces) > 1 else 0
        if best is None or free > best[0]:
            best = (free, tracker.snapshot(), gm, opaque)
    assert best is not None
    tracker.restore(best[1])
    return best[2], best[3]


def _free_outputs(tracker: Tracker) -> int:
    """Output channels of layers the analysis left prunable (not locked)."""
    return sum(not tracker.uf.is_locked(int(t)) for (_, role), tags in tracker.records.items() if role == "out"
               for t in tags)


def _attr_owners(gm: fx.GraphModule) -> set[str]:
    """Modules whose tensors the graph reads directly (``get_attr``)."""
    return {n.target.rsplit(".", 1)[0] if "." in n.target else "" for n in gm.graph.nodes if n.op == "get_attr"}


def _train_only_branches(model: nn.Module, tracker: Tracker, example_input: torch.Tensor,
                         opaque: Sequence[str] = (), concrete: bool = False) -> None:
    """Also trace training mode when some layers only run there (auxiliary classifiers).

    The training-mode run uses meta tensors, so BatchNorm statistics are not touched; should
    that fail, it runs on a copy of the model.
    """
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
        gm = trace_model(model, opaque, batch if concrete else None)
        propagate(gm, tracker, batch, real_ok=False)
        return
    except UnsupportedModelError:
        pass
    finally:
        for m, mode in modes.items():
            m.training = mode
    twin = copy.deepcopy(model).train()
    propagate(trace_model(twin, opaque, batch if concrete else None), tracker, batch)


def _lock_shared_parameters(gm: fx.GraphModule, tracker: Tracker) -> None:
    """Parameters some op reads without following their channels (tied weights, computed
    weights) keep their size: every channel of their module and their own dims is kept."""
    for target in tracker.escaped:
        owner = target.rsplit(".", 1)[0] if "." in target else ""
        for (path, _), tags in tracker.records.items():
            if path == owner or path.startswith(target + PARAM_SEP):
                tracker.lock_labels((0, tags), f"parameters of {owner or '<root>'} are used directly by the model",
                                    ("get_attr", target))
