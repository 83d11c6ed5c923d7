"""Tracing with concrete shapes, for modules whose forward does Python arithmetic on them.

Plain ``torch.fx`` cannot trace ``math.ceil(H / p)`` then ``if new_h != H`` (timm's MobileViT
blocks): a size read from a proxy is a proxy, and Python control flow on it fails. Here every
traced value is also computed on fake tensors (no arithmetic), so ``x.shape``, ``x.size()``
and ``x.dim()`` give real numbers for control flow. The sizes are :class:`Size` numbers that
remember where they come from: arithmetic on them stays symbolic, and one passed to an op
(``x.reshape(B, C, -1, n)``) is written into the graph as the computation that reads it from
the tensor, not as a literal. So the analysis still sees that the width follows the input (a
literal size would lock the channels), while the branches taken are those of the example input.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode

Thunk = Callable[[], fx.Node]


class _Number:
    """Mix-in: a concrete number with the graph computation that produces it (made on first use)."""

    _base: type
    _make: Thunk
    _node: fx.Node | None
    _tracer: ConcreteTracer

    def node(self) -> fx.Node:
        if self._node is None:
            self._node = self._make()
        return self._node


def _number(value: Any, make: Thunk, tracer: ConcreteTracer) -> Any:
    """``value`` as a :class:`Size` / :class:`SizeFloat` (a bool or other value as is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    out = SizeFloat(value) if isinstance(value, float) else Size(value)
    out._make, out._node, out._tracer = make, None, tracer
    return out


def _plain(a: Any) -> Any:
    """A :class:`Size` / :class:`SizeFloat` as the plain int / float it is; anything else as is."""
    return a._base(a) if isinstance(a, _Number) else a


def _op(fn: Callable[..., Any], swap: bool = False) -> Callable[..., Any]:
    """A binary / unary dunder that keeps the graph computation alongside the value."""

    def method(self: Any, *other: Any) -> Any:
        operands = [self, *other][::-1] if swap else [self, *other]
        plain = [_plain(o) for o in operands]
        if any(not isinstance(o, (int, float)) or isinstance(o, bool) for o in plain):
            return NotImplemented
        tracer = self._tracer

        def make() -> fx.Node:
            return tracer.create_proxy("call_function", fn, tuple(operands), {}).node  # sizes: their nodes

        return _number(fn(*plain), make, tracer)

    return method


_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
           "truediv": operator.truediv, "mod": operator.mod}


def _with_ops(cls: type) -> type:
    for name, fn in _BINARY.items():
        setattr(cls, f"__{name}__", _op(fn))
        setattr(cls, f"__r{name}__", _op(fn, swap=True))
    unary: dict[str, Callable[..., Any]] = {"neg": operator.neg, "ceil": math.ceil, "floor": math.floor}
    for name, fn in unary.items():
        setattr(cls, f"__{name}__", _op(fn))
    return cls


@_with_ops
class Size(_Number, int):
    """An int read from a tensor's shape (or computed from such ints) during a concrete trace."""

    _base = int


@_with_ops
class SizeFloat(_Number, float):
    """A float computed from :class:`Size` numbers (``H / p``)."""

    _base = float


class ConcreteProxy(fx.Proxy):
    """A proxy whose tensor value is known: sizes and dims are concrete (sizes remember their origin)."""

    tracer: ConcreteTracer

    def _value(self) -> Any:
        return self.tracer.values.get(self.node)

    @property
    def shape(self) -> Any:
        v = self._value()
        if not isinstance(v, torch.Tensor):
            return self.tracer.create_proxy("call_function", getattr, (self, "shape"), {})
        return tuple(self._dim(v, i) for i in range(v.dim()))

    def size(self, dim: int | None = None) -> Any:
        v = self._value()
        if not isinstance(v, torch.Tensor):
            args = (self,) if dim is None else (self, dim)
            return self.tracer.create_proxy("call_method", "size", args, {})
        return self.shape if dim is None else self._dim(v, dim)

    def dim(self) -> Any:
        v = self._value()
        return v.dim() if isinstance(v, torch.Tensor) else self.tracer.create_proxy("call_method", "dim", (self,), {})

    @property
    def ndim(self) -> Any:
        return self.dim()

    def _dim(self, v: torch.Tensor, i: int) -> Any:
        tracer = self.tracer

        def make() -> fx.Node:
            return tracer.create_proxy("call_method", "size", (self, i), {}).node

        return _number(int(v.shape[i]), make, tracer)


class ConcreteTracer(fx.Tracer):
    """Mix-in for an fx tracer: computes every node on fake tensors while tracing.

    Subclasses call :meth:`start` with the example input before ``trace``.
    """

    values: dict[fx.Node, Any]

    def start(self, example: torch.Tensor) -> None:
        self.values = {}
        self.fake = FakeTensorMode(allow_non_fake_inputs=True)
        self.example = self.fake.from_tensor(example)
        self.running = False
        self.leaf_forward: Callable[..., Any] | None = None

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ConcreteProxy(node, self)

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, _Number):
            return a.node()
        return super().create_arg(a)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, fx.Proxy]) -> Any:
        if self.running:  # a leaf's own forward, run for its value: its parameters are themselves
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        if self.running:
            return forward(*args, **kwargs)
        self.leaf_forward = forward
        return super().call_module(m, forward, args, kwargs)

    def create_node(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str | None = None, type_expr: Any = None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if not self.running and kind != "output":
            self._compute(node)
        return node

    def _compute(self, node: fx.Node) -> None:
        """The node's value on fake tensors (left unknown when it cannot be computed)."""
        self.running = True
        try:
            with self.fake:
                value = self._evaluate(node)
        except Exception:  # no fake kernel, data-dependent: sizes after it stay symbolic
            return
        finally:
            self.running = False
        self.values[node] = value

    def _evaluate(self, node: fx.Node) -> Any:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: self.values[n])
        if node.op == "placeholder":
            first = next(n for n in node.graph.nodes if n.op == "placeholder") is node
            if not first and not node.args:
                raise RuntimeError("no value for a second input")
            return self.example if first else node.args[0]
        if node.op == "get_attr":
            return _attribute(self.root, str(node.target))
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "call_module" and self.leaf_forward is not None:
            return self.leaf_forward(*args, **kwargs)
        raise RuntimeError(f"no value for {node.op}")


def _attribute(root: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)
