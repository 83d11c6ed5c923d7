"""``torch.fx`` tracing with errors that name the failing op and module path.

Where fx fails inside a submodule (data-dependent control flow, unsupported Python), the
tolerant trace retries with that submodule as an opaque leaf: it still runs, but its channels
(and those of its inputs and outputs) are kept, and the rest of the model stays prunable.
Only a failure in the model's own ``forward`` is an error. Where the plain trace needs opaque
leaves, it is retried with concrete shapes (:mod:`secateur.structured.concrete`: Python
arithmetic and branches on sizes run on the example input's numbers), kept if fewer submodules
stay opaque.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from secateur.errors import UnsupportedModelError
from secateur.structured.attention import is_leaf, tracing_embeddings
from secateur.structured.concrete import ConcreteTracer

MAX_OPAQUE = 64  # give up (one clear error) rather than retrace forever
MODULES_KEY = "secateur_modules"  # GraphModule.meta key: the traced model's modules by path
CONCRETE_KEY = "secateur_concrete"  # GraphModule.meta key: traced with the example input's shapes

# Layers the analysis follows as modules. A subclass that keeps its base's forward is one of them
# (a leaf, wherever it is defined); one with its own forward (a BatchNorm that adds an activation)
# is traced through, and its F.batch_norm / F.linear ... calls on its own parameters are followed.
FOLLOWED_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm, nn.LayerNorm, nn.Embedding, nn.PReLU,
)


def follows_as_module(m: nn.Module) -> bool | None:
    """True / False for a followed layer whose forward is / is not its torch.nn base's; None otherwise."""
    base = next((cls for cls in type(m).__mro__ if cls in _BASES), None)
    if base is None:
        return None
    return getattr(type(m), "forward", None) is getattr(base, "forward", None)


def _bases() -> frozenset[type]:
    """The torch.nn classes (not user subclasses) that are followed layers."""
    found: set[type] = set()
    for kind in FOLLOWED_MODULES:
        found.update(c for c in [kind, *_subclasses(kind)] if c.__module__.startswith("torch.nn"))
    return frozenset(found)


def _subclasses(cls: type) -> list[type]:
    direct: list[type] = cls.__subclasses__()
    return [sub for d in direct for sub in [d, *_subclasses(d)]]


class _PathTracer(fx.Tracer):
    """A standard fx tracer that remembers which module it is inside, for error messages."""

    def __init__(self, opaque: Iterable[str] = ()) -> None:
        super().__init__()
        self.path_stack: list[str] = []
        self.failed_in: str | None = None
        self.opaque = frozenset(opaque)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.opaque or is_leaf(m):  # attention layers: one op each
            return True
        as_module = follows_as_module(m)
        return super().is_leaf_module(m, module_qualified_name) if as_module is None else as_module

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        self.path_stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_stack[-1]
            raise
        finally:
            self.path_stack.pop()


class _ConcretePathTracer(ConcreteTracer, _PathTracer):
    """The path tracer with concrete shapes (see :mod:`secateur.structured.concrete`)."""

    def __init__(self, example: torch.Tensor, opaque: Iterable[str] = ()) -> None:
        _PathTracer.__init__(self, opaque)
        self.start(example)


_BASES = _bases()


def _trace(model: nn.Module, tracer: _PathTracer) -> fx.GraphModule:
    try:
        with tracing_embeddings(model):  # ViT's hidden_dim read as -1, so its channels are followed
            graph = tracer.trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError, RuntimeError ...)
        where = tracer.failed_in or "<root>"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} for structured pruning: {type(err).__name__}: "
            f"{first[:200]} (in module {where!r}); the model is unchanged"
        ) from None
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    # the traced-through modules, as they are (the graph module holds bare Modules on their paths)
    gm.meta[MODULES_KEY] = dict(model.named_modules())
    return gm


def _tracer(opaque: Iterable[str], example: torch.Tensor | None) -> _PathTracer:
    return _PathTracer(opaque) if example is None else _ConcretePathTracer(example, opaque)


def trace_model(model: nn.Module, opaque: Iterable[str] = (), example: torch.Tensor | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (``opaque`` submodules as leaves; with concrete shapes from
    ``example`` if given); failures raise one line."""
    gm = _trace(model, _tracer(opaque, example))
    gm.meta[CONCRETE_KEY] = example is not None
    return gm


def trace_tolerant(model: nn.Module, example: torch.Tensor | None = None
                   ) -> list[tuple[fx.GraphModule, list[tuple[str, str]]]]:
    """Trace ``model``, turning each submodule fx cannot trace into an opaque leaf.

    Returns the traces to choose from, each a graph module and ``(module path, reason)`` for
    every opaque submodule: the plain trace, then (with an ``example`` input, where the plain
    one needed opaque leaves) the retry with concrete shapes if it needed fewer. The caller
    keeps the one whose analysis frees more channels: a concrete trace can see inside a leaf
    and still follow less (a size it bakes in, a parameter it reads another way).
    """
    gm, opaque = _tolerant(model, None)
    if opaque and example is not None:
        try:
            again, fewer = _tolerant(model, example)
        except UnsupportedModelError:
            return [(gm, opaque)]
        if len(fewer) < len(opaque):
            return [(gm, opaque), (again, fewer)]
    return [(gm, opaque)]


def _tolerant(model: nn.Module, example: torch.Tensor | None) -> tuple[fx.GraphModule, list[tuple[str, str]]]:
    opaque: list[tuple[str, str]] = []
    while True:
        tracer = _tracer((path for path, _ in opaque), example)
        try:
            gm = _trace(model, tracer)
            gm.meta[CONCRETE_KEY] = example is not None
            return gm, opaque
        except UnsupportedModelError as err:
            where = tracer.failed_in
            if not where or where in tracer.opaque or len(opaque) >= MAX_OPAQUE:
                raise
            opaque.append((where, str(err)))
