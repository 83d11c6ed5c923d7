"""Channel-label propagation through an fx graph (see :mod:`secateur.structured.graph`).

Each handler receives the node, its computed value and the labels of its inputs and returns
the labels of its output: ``(dim, tags)`` for a tensor, a list for a tuple of tensors, or
``None`` when the output carries no prunable channels. Unknown ops lock their inputs.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from secateur.errors import UnsupportedModelError
from secateur.structured.attention import label_layer, layout_of
from secateur.structured.reshape import reshape_labels
from secateur.structured.tracker import Labels, Tracker

POINTWISE = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "hardswish", "hardswish_", "hardsigmoid",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "contiguous", "clone", "detach", "float", "half", "double", "to", "type_as", "clamp", "clamp_",
    "clamp_min", "hardtanh", "hardtanh_", "leaky_relu", "elu", "softplus", "mish", "neg", "abs",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
    "max_pool3d", "interpolate", "upsample", "pad", "expand", "expand_as", "stochastic_depth",
    "channel_dropout",
}
BROADCAST = {
    "add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "div", "div_",
    "itruediv", "maximum", "minimum", "where",
}
CAT = {"cat", "concat", "concatenate"}
RESHAPE = {"flatten", "view", "reshape"}
PERMUTE = {"permute", "transpose", "swapaxes", "swapdims"}
SPLIT = {"split", "chunk", "unbind", "tensor_split"}
REDUCE = {"mean", "sum", "amax", "amin"}
SOFTMAX = {"softmax", "log_softmax"}

POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d,
)
CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
SHAPE_PRESERVING = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _LabelInterpreter(fx.Interpreter):
    """Runs the graph for real (shapes) and computes labels node by node."""

    def __init__(self, gm: fx.GraphModule, tracker: Tracker, mode: Any = None, shapes_only: bool = False) -> None:
        super().__init__(gm)
        self.tracker = tracker
        self.labels: dict[fx.Node, Any] = {}
        self.mode = mode if mode is not None else contextlib.nullcontext()
        self.shapes_only = shapes_only

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        """On meta tensors, shape-preserving layers just pass their input on (no meta kernels)."""
        if (self.shapes_only and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
                and isinstance(self.fetch_attr(target), SHAPE_PRESERVING)):
            return args[0]
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        with self.mode:
            value = super().run_node(n)
        try:
            self.labels[n] = label_node(self, n, value)
        except UnsupportedModelError:
            raise
        except Exception as err:  # a handler bug must not half-analyse: lock and note instead
            _lock_inputs(self, n, f"{_describe(n)}: {type(err).__name__}: {err}")
            self.labels[n] = None
        return value


def propagate(gm: fx.GraphModule, tracker: Tracker, example_input: torch.Tensor, real_ok: bool = True) -> None:
    """Run ``gm`` on ``example_input`` under no_grad and fill ``tracker`` with channel records.

    Only shapes matter, so the graph first runs on the ``meta`` device (no arithmetic), then
    with fake tensors, and only if both fail (and ``real_ok``) for real.
    """
    snapshot = tracker.snapshot()
    with torch.no_grad():
        for runner in (_run_meta, _run_fake) if real_ok else (_run_meta,):
            try:
                runner(gm, tracker, example_input)
                return
            except UnsupportedModelError as err:
                raise _one_line(err) from None
            except Exception:  # an op without a meta / fake implementation: try the next way
                tracker.restore(snapshot)
        try:
            if not real_ok:
                raise RuntimeError("no meta-device run")
            _LabelInterpreter(gm, tracker).run(example_input)
        except UnsupportedModelError as err:
            raise _one_line(err) from None
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UnsupportedModelError(
                f"cannot run the traced model on the example input: {type(err).__name__}: {first[:200]}"
            ) from None


def _one_line(err: UnsupportedModelError) -> UnsupportedModelError:
    """fx appends the failing node to exception messages; keep the user-facing first line."""
    return UnsupportedModelError((str(err).strip().splitlines() or [""])[0])


class _Runner(nn.Module):
    """Wraps an interpreter so ``torch.func.functional_call`` can swap in meta parameters."""

    def __init__(self, gm: fx.GraphModule, interp: _LabelInterpreter) -> None:
        super().__init__()
        self.gm = gm
        self.interp = [interp]

    def forward(self, x: torch.Tensor) -> Any:
        return self.interp[0].run(x)


def _run_meta(gm: fx.GraphModule, tracker: Tracker, x: torch.Tensor) -> None:
    runner = _Runner(gm, _LabelInterpreter(gm, tracker, shapes_only=True))
    tensors = {**dict(runner.named_parameters(remove_duplicate=False)),
               **dict(runner.named_buffers(remove_duplicate=False))}
    meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
    torch.func.functional_call(runner, meta, (x.to("meta"),), strict=True)


def _run_fake(gm: fx.GraphModule, tracker: Tracker, x: torch.Tensor) -> None:
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    _LabelInterpreter(gm, tracker, fake).run(fake.from_tensor(x))


# --------------------------------------------------------------------------- helpers


def _describe(n: fx.Node) -> str:
    """'op (module path)' for notes and errors."""
    op = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
    stack = n.meta.get("nn_module_stack") or {}
    path = n.target if n.op == "call_module" else (list(stack)[-1] if stack else "<root>")
    return f"{n.op} {op!r} in {path!r}"


def _lab(it: _LabelInterpreter, a: Any) -> Any:
    return it.labels.get(a) if isinstance(a, fx.Node) else None


def _val(it: _LabelInterpreter, a: Any) -> Any:
    return it.env[a] if isinstance(a, fx.Node) else a


def _nodes(n: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((n.args, n.kwargs), found.append)
    return found


def _lock_inputs(it: _LabelInterpreter, n: fx.Node, why: str) -> None:
    for a in _nodes(n):
        it.tracker.lock_labels(_lab(it, a), f"kept channels reaching {why}")


def _arg(n: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(n.args) > i:
        return n.args[i]
    return n.kwargs.get(name, default)


def _name(n: fx.Node) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", "")


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


# --------------------------------------------------------------------------- dispatch


def label_node(it: _LabelInterpreter, n: fx.Node, value: Any) -> Any:
    """Labels of ``n``'s output."""
    tr = it.tracker
    if n.op == "placeholder":
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return (1, tr.uf.new(value.shape[1], locked=True))
        return None
    if n.op == "get_attr":
        return None
    if n.op == "output":
        tr.lock_labels(_flatten_labels(_lab_tree(it, n.args[0])))
        return None
    if n.op == "call_module":
        tr.visited.add(str(n.target))
        return _module(it, n, it.fetch_attr(str(n.target)), value)
    return _function(it, n, value)


def _lab_tree(it: _LabelInterpreter, a: Any) -> Any:
    if isinstance(a, fx.Node):
        return it.labels.get(a)
    if isinstance(a, (list, tuple)):
        return [_lab_tree(it, x) for x in a]
    if isinstance(a, dict):
        return [_lab_tree(it, x) for x in a.values()]
    return None


def _flatten_labels(tree: Any) -> list:
    if tree is None:
        return []
    if isinstance(tree, list):
        return [x for item in tree for x in _flatten_labels(item)]
    return [tree]


def _function(it: _LabelInterpreter, n: fx.Node, value: Any) -> Any:
    name = _name(n)
    if n.target is operator.getitem:
        return _getitem(it, n, value)
    if name in SPLIT:
        return _split(it, n, value)
    if not isinstance(value, torch.Tensor):
        if (any(isinstance(_val(it, a), torch.Tensor) and _lab(it, a) is not None for a in _nodes(n))
                and isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value)):
            _lock_inputs(it, n, _describe(n))
        return None
    handler = _HANDLERS.get(name)
    if handler is None:
        if not any(_lab(it, a) is not None for a in _nodes(n)):
            return None
        _lock_inputs(it, n, _describe(n))
        return None
    return handler(it, n, value)


# --------------------------------------------------------------------------- function handlers


def _pointwise(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    src = n.args[0] if n.args else None
    for extra in _nodes(n):
        if extra is not src:
            it.tracker.lock_labels(_lab(it, extra), f"kept channels of a second input to {_describe(n)}")
    lab, x = _lab(it, src), _val(it, src)
    if lab is None or not isinstance(x, torch.Tensor):
        return _broadcast(it, n, value) if _name(n) in ("where",) else None
    return _aligned(it, n, lab, x, value)


def _aligned(it: _LabelInterpreter, n: fx.Node, lab: Labels, x: torch.Tensor, value: torch.Tensor) -> Labels | None:
    """Same labels at the same (right-aligned) dim when the op keeps that dim's size."""
    d = lab[0] + value.dim() - x.dim()
    if 0 <= d < value.dim() and value.shape[d] == x.shape[lab[0]]:
        return (d, lab[1])
    it.tracker.lock_labels(lab, f"kept channels whose size changes in {_describe(n)}")
    return None


def _broadcast(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    """Elementwise ops: channels at the same position of every operand are coupled."""
    tr, nd = it.tracker, value.dim()
    tensors = [(a, _val(it, a)) for a in _nodes(n) if isinstance(_val(it, a), torch.Tensor)]
    labelled = [(a, x, _lab(it, a)) for a, x in tensors if _lab(it, a) is not None]
    if not labelled:
        return None
    dims = {lab[0] + nd - x.dim() for _, x, lab in labelled}
    if len(dims) != 1:
        _lock_inputs(it, n, f"{_describe(n)} (operands labelled on different dims)")
        return None
    d = dims.pop()
    size = value.shape[d]
    base = labelled[0][2][1]
    for i, (_, x, lab) in enumerate(labelled):
        if x.shape[lab[0]] != size:
            _lock_inputs(it, n, f"{_describe(n)} (one channel broadcast over many)")
            return None
        if i:
            tr.uf.union_pairs(base, lab[1])
    for a, x in tensors:
        k = d - (nd - x.dim())
        if _lab(it, a) is None and 0 <= k < x.dim() and x.shape[k] > 1:
            tr.lock_labels((d, base), f"kept channels combined with a constant in {_describe(n)}")
    return (d, base)


def _cat(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    tr = it.tracker
    parts = list(_arg(n, 0, "tensors"))
    dim = _norm_dim(_arg(n, 1, "dim", 0), value.dim())
    labs = [_lab(it, a) for a in parts]
    if all(lab is None for lab in labs):
        return None
    ldims = {lab[0] for lab in labs if lab is not None}
    if ldims != {dim}:
        if len(ldims) == 1 and all(lab is not None for lab in labs):
            d = ldims.pop()
            for lab in labs[1:]:
                tr.uf.union_pairs(labs[0][1], lab[1])
            return (d, labs[0][1])
        _lock_inputs(it, n, f"{_describe(n)} (mixed channel layout)")
        return None
    tags = [lab[1] if lab is not None else tr.uf.new(_val(it, a).shape[dim], locked=True)
            for a, lab in zip(parts, labs)]
    return (dim, torch.cat(tags))


def _reshape(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    src = n.args[0]
    lab, x = _lab(it, src), _val(it, src)
    if lab is None:
        return None
    literal = _literal_dims(n, value.dim())
    out = reshape_labels(tuple(x.shape), tuple(value.shape), lab, literal)
    if out is None:
        it.tracker.lock_labels(lab, f"kept channels reshaped by {_describe(n)}")
    return out


def _literal_dims(n: fx.Node, ndim: int) -> set[int]:
    """Output dims of view/reshape given as hard-coded sizes (they break when channels shrink)."""
    if _name(n) == "flatten":
        return set()
    given: Any = n.args[1:] if len(n.args) > 1 else n.kwargs.get("shape", ())
    shape = list(given)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    if len(shape) != ndim:
        return set(range(ndim))
    return {i for i, s in enumerate(shape) if isinstance(s, int) and s not in (-1, 1)}


def _permute(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    src = n.args[0]
    lab = _lab(it, src)
    if lab is None:
        return None
    nd = value.dim()
    rest: list[Any] = list(n.args[1:])
    if _name(n) == "permute":
        order = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        dims_kw: Any = n.kwargs.get("dims", ())
        order = order or list(dims_kw)
        return (order.index(lab[0]) if lab[0] in order else [_norm_dim(o, nd) for o in order].index(lab[0]), lab[1])
    a = _norm_dim(_arg(n, 1, "dim0"), nd)
    b = _norm_dim(_arg(n, 2, "dim1"), nd)
    d = b if lab[0] == a else a if lab[0] == b else lab[0]
    return (d, lab[1])


def _reduce(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    src = n.args[0]
    lab, x = _lab(it, src), _val(it, src)
    if lab is None:
        return None
    dims = _arg(n, 1, "dim")
    keep = bool(_arg(n, 2, "keepdim", False))
    if dims is None:
        it.tracker.lock_labels(lab, f"kept channels reduced by {_describe(n)}")
        return None
    dims = {_norm_dim(d, x.dim()) for d in (dims if isinstance(dims, (tuple, list)) else [dims])}
    if lab[0] in dims:
        it.tracker.lock_labels(lab, f"kept channels reduced by {_describe(n)}")
        return None
    return (lab[0] if keep else lab[0] - sum(d < lab[0] for d in dims), lab[1])


def _softmax(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    src = n.args[0]
    lab, x = _lab(it, src), _val(it, src)
    if lab is None:
        return None
    dim = _arg(n, 1, "dim")
    if dim is None or _norm_dim(dim, x.dim()) == lab[0]:
        it.tracker.lock_labels(lab, f"kept channels normalised by {_describe(n)}")
        return None
    return lab


def _getitem(it: _LabelInterpreter, n: fx.Node, value: Any) -> Any:
    src = n.args[0]
    idx: Any = n.args[1]  # an int, slice, tuple ... (fx types it as the whole Argument union)
    lab, x = _lab(it, src), _val(it, src)
    if isinstance(lab, list):
        try:
            return lab[idx]
        except (TypeError, IndexError):
            return None
    if lab is None or not isinstance(x, torch.Tensor) or not isinstance(value, torch.Tensor):
        return None
    d = _index_dim(idx, x, lab[0])
    if d is None:
        it.tracker.lock_labels(lab, f"kept channels indexed by {_describe(n)}")
    return None if d is None else (d, lab[1])


def _index_dim(idx: Any, x: torch.Tensor, d: int) -> int | None:
    """Where dim ``d`` of ``x`` lands after ``x[idx]``; None if it is sliced or indexed away."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) for i in items):
        return None
    if Ellipsis in items:
        k = items.index(Ellipsis)
        used = sum(i is not None for i in items) - 1
        items = items[:k] + [slice(None)] * (x.dim() - used) + items[k + 1:]
    items += [slice(None)] * (x.dim() - sum(i is not None for i in items))
    src = out = 0
    for i in items:
        if i is None:
            out += 1
            continue
        if src == d:
            if isinstance(i, slice) and range(x.shape[d])[i] == range(x.shape[d]):
                return out
            return None
        src += 1
        out += isinstance(i, slice)
    return None


def _split(it: _LabelInterpreter, n: fx.Node, value: Any) -> Any:
    src = n.args[0]
    lab, x = _lab(it, src), _val(it, src)
    if lab is None or not isinstance(value, (tuple, list)):
        return None
    default = 0
    dim = _norm_dim(_arg(n, 2, "dim", default) if _name(n) != "unbind" else _arg(n, 1, "dim", 0), x.dim())
    if dim == lab[0]:
        it.tracker.lock_labels(lab, f"kept channels split by {_describe(n)}")
        return [None] * len(value)
    d = lab[0] - (1 if _name(n) == "unbind" and dim < lab[0] else 0)
    return [(d, lab[1]) for _ in value]


_HANDLERS: dict[str, Callable[[_LabelInterpreter, fx.Node, torch.Tensor], Any]] = {}
_HANDLERS.update(dict.fromkeys(POINTWISE, _pointwise))
_HANDLERS.update(dict.fromkeys(BROADCAST, _broadcast))
_HANDLERS.update(dict.fromkeys(CAT, _cat))
_HANDLERS.update(dict.fromkeys(RESHAPE, _reshape))
_HANDLERS.update(dict.fromkeys(PERMUTE, _permute))
_HANDLERS.update(dict.fromkeys(REDUCE, _reduce))
_HANDLERS.update(dict.fromkeys(SOFTMAX, _softmax))


# --------------------------------------------------------------------------- module handlers


def _module(it: _LabelInterpreter, n: fx.Node, m: nn.Module, value: Any) -> Any:
    path = str(n.target)
    inputs = [*n.args, *n.kwargs.values()]
    src = inputs[0] if inputs else None
    layout = layout_of(m)
    if layout is not None:
        return _attention(it, n, path, layout, value)
    for extra in inputs[1:]:  # only the first input's channels are followed through a module
        it.tracker.lock_labels(_lab(it, extra), f"kept channels of a second input to {_describe(n)}")
    lab, x = _lab(it, src), _val(it, src)
    if isinstance(m, CONVS):
        return _conv(it.tracker, path, m, lab)
    if isinstance(m, nn.Linear):
        return _linear(it.tracker, path, m, lab, x)
    if not isinstance(value, torch.Tensor) or not isinstance(x, torch.Tensor):
        _lock_inputs(it, n, _describe(n))
        return None
    if lab is None:
        return None
    if isinstance(m, POINTWISE_MODULES):
        return _aligned(it, n, lab, x, value)
    if isinstance(m, nn.Flatten):
        out = reshape_labels(tuple(x.shape), tuple(value.shape), lab, set())
        if out is None:
            it.tracker.lock_labels(lab, f"kept channels reshaped by {_describe(n)}")
        return out
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return _softmax_module(it, n, m, lab, value)
    return _norm_module(it, n, path, m, lab, value)


def _attention(it: _LabelInterpreter, n: fx.Node, path: str, layout: Any, value: Any) -> Any:
    """An attention layer (one op, :mod:`secateur.structured.attention`): its heads, and its
    input channels when query, key and value are the same tensor."""
    src = n.args[0] if n.args else None
    others = [a for a in _nodes(n) if a is not src]
    tensor_args = [a for a in n.args if isinstance(_val(it, a), torch.Tensor)]
    lab, x = _lab(it, src), _val(it, src)
    if any(a is not src for a in tensor_args):  # cross-attention: packed projections read two inputs
        it.tracker.lock_labels(lab, f"kept channels of the two inputs of {_describe(n)}")
        lab = None
    for a in others:
        it.tracker.lock_labels(_lab(it, a), f"kept channels of a second input to {_describe(n)}")
    ndim = x.dim() if isinstance(x, torch.Tensor) else 0
    out = label_layer(it.tracker, path, layout, lab, ndim)
    if isinstance(value, (tuple, list)):
        return [out, *[None] * (len(value) - 1)]
    return out


def _norm_module(it: _LabelInterpreter, n: fx.Node, path: str, m: nn.Module, lab: Labels,
                 value: torch.Tensor) -> Labels | None:
    tr = it.tracker
    if isinstance(m, CHANNEL_NORMS) or (isinstance(m, nn.PReLU) and m.num_parameters > 1):
        if lab[0] == 1:
            if any(True for _ in m.parameters()) or any(b is not None for b in m.buffers()):
                tr.record(path, "norm", lab[1])
            return lab
        if isinstance(m, nn.PReLU):
            tr.lock_labels(lab, f"kept channels of {_describe(n)}")
        return lab
    if isinstance(m, nn.PReLU):
        return lab
    if isinstance(m, nn.GroupNorm):
        return _group_norm(tr, path, m, lab)
    if isinstance(m, nn.LayerNorm):
        if lab[0] >= value.dim() - len(m.normalized_shape):
            tr.lock_labels(lab, f"kept channels normalised together by {_describe(n)}")
        return lab
    tr.lock_labels(lab, f"kept channels reaching {_describe(n)}")
    return None


def _softmax_module(it: _LabelInterpreter, n: fx.Node, m: nn.Softmax | nn.LogSoftmax, lab: Labels,
                    value: torch.Tensor) -> Labels | None:
    nd = value.dim()
    if m.dim is None or _norm_dim(m.dim, nd) == lab[0]:
        it.tracker.lock_labels(lab, f"kept channels normalised by {_describe(n)}")
        return None
    return lab


def _group_norm(tr: Tracker, path: str, m: nn.GroupNorm, lab: Labels) -> Labels:
    """GroupNorm statistics span a group: a whole group is kept or removed."""
    if lab[0] != 1:
        tr.lock_labels(lab)
        return lab
    tr.uf.union_rows(lab[1].reshape(m.num_groups, -1))
    if m.affine:
        tr.record(path, "norm", lab[1])
    return lab


def _conv(tr: Tracker, path: str, m: nn.Conv1d | nn.Conv2d | nn.Conv3d, lab: Labels | None) -> Labels:
    """Convs consume their input channels and create output channels; groups couple both."""
    out = tr.produce(path, m.out_channels)
    tr.record(path, "out", out)
    if lab is None or lab[0] != 1:
        tr.lock_labels(lab)
        if m.groups > 1:
            tr.lock_labels((1, out))
        return (1, out)
    tr.record(path, "in", lab[1])
    if m.groups > 1:
        rows = torch.cat([lab[1].reshape(m.groups, -1), out.reshape(m.groups, -1)], dim=1)
        tr.uf.union_rows(rows)
    return (1, out)


def _linear(tr: Tracker, path: str, m: nn.Linear, lab: Labels | None, x: Any) -> Labels | None:
    """Linear layers act on the last dim; labels on another dim pass through untouched."""
    nd = x.dim() if isinstance(x, torch.Tensor) else 2
    if lab is not None and lab[0] != nd - 1:
        return lab
    out = tr.produce(path, m.out_features)
    tr.record(path, "out", out)
    if lab is not None:
        tr.record(path, "in", lab[1])
    return (nd - 1, out)
