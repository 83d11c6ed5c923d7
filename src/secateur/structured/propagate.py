"""Channel-label propagation through an fx graph (see :mod:`secateur.structured.graph`).

Each handler receives the node, its computed value and the labels of its inputs and returns
the labels of its output: ``(dim, tags)`` for a tensor, a list for a tuple of tensors, or
``None`` when the output carries no prunable channels. Unknown ops lock their inputs.
"""

from __future__ import annotations

import contextlib
import operator
import types
from collections.abc import Callable
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from secateur.errors import UnsupportedModelError
from secateur.structured.attention import label_layer, layout_of
from secateur.structured.reshape import grouped_split, reshape_labels
from secateur.structured.splits import SplitCall, labelled_parts, split_labels
from secateur.structured.trace import MODULES_KEY
from secateur.structured.tracker import Labels, Tracker, param_key

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
RESHAPE = {"flatten", "view", "reshape", "view_as", "reshape_as"}
AS_SHAPE = {"view_as", "reshape_as"}  # the sizes of another tensor
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
        self.params: dict[fx.Node, Provenance] = {}  # tensors that are (views of) one parameter / buffer
        self.followed: set[fx.Node] = set()  # ops that followed the channels of the parameters they read
        self.lost: set[fx.Node] = set()  # outputs whose channels are unknown because an op was not followed
        self.stats: dict[fx.Node, tuple[int, torch.Tensor]] = {}  # statistics over channels: (dim from the right, tags)
        self.sizes: dict[fx.Node, Any] = {}  # ints that are a labelled dim's size (x.shape[1]): their tags

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the graph; afterwards, parameters read by ops that did not follow them are noted."""
        out = super().run(*args, **kwargs)
        self.tracker.escaped.update(_escaped_params(self))
        return out

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
            if self.labels[n] is None:
                _track_param(self, n, value)
                _track_size(self, n)
                if n not in self.stats and any(a in self.lost or _lab(self, a) is not None for a in _nodes(n)):
                    self.lost.add(n)  # channels went in, none came out
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


def _where(n: fx.Node) -> tuple[str, str]:
    """(op, module path) of a node, for :attr:`DependencyGraph.unfollowed` (a module's op is its class)."""
    if n.op == "call_module":
        owner = n.graph.owning_module
        m = owner.get_submodule(str(n.target)) if owner is not None else None
        return (type(m).__name__ if m is not None else str(n.target), str(n.target))
    op = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
    stack = n.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else "<root>"
    return (str(op), str(path))


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
        it.tracker.lock_labels(_lab(it, a), f"kept channels reaching {why}", _where(n))


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
    if it.stats and _statistic_use(it, n, value):
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
    if _is_wrapped(n):
        return _wrapped_call(it, n, value)
    if name in SPLIT:
        return _split(it, n, value)
    if not isinstance(value, torch.Tensor):
        if (any(isinstance(_val(it, a), torch.Tensor) and _lab(it, a) is not None for a in _nodes(n))
                and isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value)):
            _lock_inputs(it, n, _describe(n))
        return None
    handler = _HANDLERS.get(name)
    if n.op == "call_function" and _hashable(n.target) and n.target in _PARAM_HANDLERS:
        handler = _PARAM_HANDLERS[n.target]
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
            it.tracker.lock_labels(_lab(it, extra), f"kept channels of a second input to {_describe(n)}", _where(n))
    lab, x = _lab(it, src), _val(it, src)
    if lab is None or not isinstance(x, torch.Tensor):
        return _broadcast(it, n, value) if _name(n) in ("where",) else None
    return _aligned(it, n, lab, x, value)


def _aligned(it: _LabelInterpreter, n: fx.Node, lab: Labels, x: torch.Tensor, value: torch.Tensor) -> Labels | None:
    """Same labels at the same (right-aligned) dim when the op keeps that dim's size."""
    d = lab[0] + value.dim() - x.dim()
    if 0 <= d < value.dim() and value.shape[d] == x.shape[lab[0]]:
        return (d, lab[1])
    it.tracker.lock_labels(lab, f"kept channels whose size changes in {_describe(n)}", _where(n))
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
    followed = True
    for a, x in tensors:
        k = d - (nd - x.dim())
        if _lab(it, a) is None and 0 <= k < x.dim() and x.shape[k] > 1 and not _param_channels(it, a, k, base):
            followed = False  # the output of an op not followed is reported there, not here again
            tr.lock_labels((d, base), f"kept channels combined with a constant in {_describe(n)}",
                           None if a in it.lost else _where(n))
    if followed:
        it.followed.add(n)
    return (d, base)


def _cat(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    tr = it.tracker
    parts = list(_arg(n, 0, "tensors"))
    dim = _norm_dim(_arg(n, 1, "dim", 0), value.dim())
    labs = [_lab(it, a) for a in parts]
    if all(lab is None for lab in labs):
        return None
    ldims = {lab[0] for lab in labs if lab is not None}
    if len(ldims) == 1 and dim not in ldims:
        labs = _param_parts(it, n, parts, labs, ldims.copy().pop(), value.dim())
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
    if lab is None and not it.sizes:
        return None
    literal = _literal_dims(n, value.dim(), it)
    out = reshape_labels(tuple(x.shape), tuple(value.shape), lab, literal) if lab is not None else None
    if out is None and lab is not None:
        out = _grouped_split(it, n, x, value, lab, literal)
    if out is None and lab is not None:
        it.tracker.lock_labels(lab, f"kept channels reshaped by {_describe(n)}", _where(n))
    _counts_as_sizes(it, n, out, value.dim())
    return out


def _literal_dims(n: fx.Node, ndim: int, it: _LabelInterpreter | None = None) -> set[int]:
    """Output dims of view/reshape given as hard-coded sizes (they break when channels shrink).

    ``view_as`` / ``reshape_as`` take their sizes from another tensor: only its labelled dim
    follows the channels, its other dims are fixed.
    """
    if _name(n) == "flatten":
        return set()
    if _name(n) in AS_SHAPE:
        other = _lab(it, n.args[1]) if it is not None and len(n.args) > 1 else None
        return set(range(ndim)) - ({other[0]} if isinstance(other, tuple) else set())
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
    if _name(n) == "permute":
        order = _perm_order(n)
        return (order.index(lab[0]) if lab[0] in order else [_norm_dim(o, nd) for o in order].index(lab[0]), lab[1])
    a = _norm_dim(_arg(n, 1, "dim0"), nd)
    b = _norm_dim(_arg(n, 2, "dim1"), nd)
    d = b if lab[0] == a else a if lab[0] == b else lab[0]
    return (d, lab[1])


def _perm_order(n: fx.Node) -> list[Any]:
    """The dims a ``permute`` node orders its input by."""
    rest: list[Any] = list(n.args[1:])
    order = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
    dims_kw: Any = n.kwargs.get("dims", ())
    return order or list(dims_kw)


def _reduce(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    return _reduced(it, n, _arg(n, 1, "dim"), bool(_arg(n, 2, "keepdim", False)))


def _reduced(it: _LabelInterpreter, n: fx.Node, dims: Any, keep: bool) -> Labels | None:
    """A reduction over ``dims`` keeps the labels of another dim; over the channels it is a statistic."""
    src = n.args[0]
    lab, x = _lab(it, src), _val(it, src)
    if lab is None:
        return None
    if dims is None:
        it.tracker.lock_labels(lab, f"kept channels reduced by {_describe(n)}", _where(n))
        return None
    dims = {_norm_dim(d, x.dim()) for d in (dims if isinstance(dims, (tuple, list)) else [dims])}
    if lab[0] in dims:
        _channel_statistic(it, n, lab, x, keep)
        return None
    return (lab[0] if keep else lab[0] - sum(d < lab[0] for d in dims), lab[1])


def _softmax(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    src = n.args[0]
    lab, x = _lab(it, src), _val(it, src)
    if lab is None:
        return None
    dim = _arg(n, 1, "dim")
    if dim is None or _norm_dim(dim, x.dim()) == lab[0]:
        it.tracker.lock_labels(lab, f"kept channels normalised by {_describe(n)}", _where(n))
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
        it.tracker.lock_labels(lab, f"kept channels indexed by {_describe(n)}", _where(n))
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
        return _channel_split(it, n, lab, value)
    d = lab[0] - (1 if _name(n) == "unbind" and dim < lab[0] else 0)
    return [(d, lab[1]) for _ in value]


def _roll(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    """A cyclic shift along other dims (Swin's shifted windows) keeps the channels where they are."""
    lab, x = _lab(it, n.args[0]), _val(it, n.args[0])
    if lab is None:
        return None
    dims = _arg(n, 2, "dims")
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)) or not dims or lab[0] in {_norm_dim(d, x.dim()) for d in dims}:
        it.tracker.lock_labels(lab, f"kept channels shifted by {_describe(n)}", _where(n))
        return None
    return lab


_HANDLERS: dict[str, Callable[[_LabelInterpreter, fx.Node, torch.Tensor], Any]] = {"roll": _roll}
_HANDLERS.update(dict.fromkeys(POINTWISE, _pointwise))
_HANDLERS.update(dict.fromkeys(BROADCAST, _broadcast))
_HANDLERS.update(dict.fromkeys(CAT, _cat))
_HANDLERS.update(dict.fromkeys(RESHAPE, _reshape))
_HANDLERS.update(dict.fromkeys(PERMUTE, _permute))
_HANDLERS.update(dict.fromkeys(REDUCE, _reduce))
_HANDLERS.update(dict.fromkeys(SOFTMAX, _softmax))


# --------------------------------------------------------------------------- statistics over the channels
#
# A mean, sum or norm over the channel dim (keepdim) is one value per position: a statistic of the
# channels, not a channel. Where it is only broadcast back onto channels on that same dim
# (GlobalResponseNorm's Gx / mean(Gx), a hand-written LayerNorm's x - mean), it is a normaliser
# and the channels stay prunable, as through a LayerNorm: the pruned model takes the statistic over
# the kept channels only. A sum or norm then equals the original's where the removed channels are
# zero at its input; a mean divides by the kept count instead of the full one. A statistic used any
# other way (concatenated, pooled, returned) keeps its channels. Per-channel reductions (a norm
# over the spatial dims) keep the channel labels.

STAT_REDUCE = {"mean", "sum", "norm", "linalg_vector_norm", "linalg_norm"}
NORMS = {"norm", "linalg_vector_norm", "linalg_norm"}  # (input, p / ord, dim, keepdim)
ELEMENTWISE = {"sqrt", "rsqrt", "pow", "square", "reciprocal", "exp", "log"}
FUSED = {"addcmul", "addcdiv"}  # input + value * t1 (* or /) t2: elementwise over all three


def _channel_statistic(it: _LabelInterpreter, n: fx.Node, lab: Labels, x: torch.Tensor, keep: bool) -> None:
    """A reduction over the channel dim: a statistic (followed by its uses), or kept channels."""
    if keep and _name(n) in STAT_REDUCE:
        it.stats[n] = (lab[0] - x.dim(), lab[1])
    else:
        it.tracker.lock_labels(lab, f"kept channels reduced by {_describe(n)}", _where(n))


def _vector_norm(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    """Tensor.norm / torch.norm / torch.linalg.vector_norm: a reduction whose dim is the third argument."""
    return _reduced(it, n, _arg(n, 2, "dim"), bool(_arg(n, 3, "keepdim", False)))


def _statistic_use(it: _LabelInterpreter, n: fx.Node, value: Any) -> bool:
    """Follow a node that reads a statistic; True when its output is itself one (it carries no labels).

    A statistic may pass through elementwise ops with no channels (``+ eps``, ``sqrt``) and then
    be broadcast onto channels labelled on its dim; reaching anything else keeps its channels.
    """
    srcs = [a for a in _nodes(n) if a in it.stats]
    if not srcs:
        return False
    d = it.stats[srcs[0]][0]
    name = _name(n)
    elementwise = (n.op in ("call_function", "call_method") and isinstance(value, torch.Tensor)
                   and name in POINTWISE | ELEMENTWISE | BROADCAST | FUSED)
    if elementwise and all(it.stats[a][0] == d for a in srcs):
        labelled = [a for a in _nodes(n) if isinstance(_lab(it, a), tuple)]
        if not labelled and value.dim() >= -d and value.shape[d] == 1:
            it.stats[n] = (d, torch.cat([it.stats[a][1] for a in srcs]))
            return True
        if labelled and name in BROADCAST | FUSED and all(_lab(it, a)[0] - _val(it, a).dim() == d for a in labelled):
            return False  # a normaliser: broadcast back onto the channels it was taken over
    for a in srcs:
        it.tracker.lock_labels((0, it.stats[a][1]), f"kept channels whose statistic reaches {_describe(n)}",
                               _where(n))
    return False


_HANDLERS.update(dict.fromkeys(NORMS, _vector_norm))
_HANDLERS.update(dict.fromkeys(ELEMENTWISE, _pointwise))
_HANDLERS.update(dict.fromkeys(FUSED, _broadcast))
_HANDLERS["normalize"] = _pointwise  # F.normalize: divides by a norm per channel, or over them (a normaliser)


# --------------------------------------------------------------------------- channel shuffles


def _grouped_split(it: _LabelInterpreter, n: fx.Node, x: torch.Tensor, value: torch.Tensor, lab: Labels,
                   literal: set[int]) -> Labels | None:
    """A view splitting the channels into a hard-coded number of groups that are merged back
    (channel_shuffle's ``view(B, g, C // g, H, W)``, transpose, view): the same position in every
    group goes together, as in a grouped convolution, so the labels sit on the per-group dim and
    survive the shuffle. A split that is not merged back (attention heads) is not one."""
    found = grouped_split(tuple(x.shape), tuple(value.shape), lab, literal)
    if found is None or not _merged_back(n):
        return None
    out, rows = found
    it.tracker.uf.union_rows(rows)
    return out


def _merged_back(n: fx.Node) -> bool:
    """Every use of ``n`` is a reshape, or a permute / copy on the way to one."""
    users = list(n.users)
    return bool(users) and all(
        u.op in ("call_function", "call_method")
        and (_name(u) in RESHAPE or (_name(u) in PERMUTE | {"contiguous", "clone"} and _merged_back(u)))
        for u in users)


# --------------------------------------------------------------------------- channel-dim splits
#
# split / chunk along the labelled dim: each part takes the tags at its offsets, and where the
# sizes live (a module attribute the surgery rewrites, or a count the forward divides by) is
# decided by secateur.structured.splits.


def _channel_split(it: _LabelInterpreter, n: fx.Node, lab: Labels, value: Any) -> list:
    """The parts of a split along the channels (locked, and reported, where it cannot be followed)."""
    owner = _caller(n)
    modules = getattr(it.module, "meta", {}).get(MODULES_KEY, {})
    asked = n.args[1] if len(n.args) > 1 else next(
        (n.kwargs[k] for k in ("split_size_or_sections", "split_size", "chunks", "sections") if k in n.kwargs), None)
    parts = tuple(v.shape[lab[0]] if isinstance(v, torch.Tensor) else 0 for v in value)
    call = SplitCall(_name(n), asked, parts, owner, modules.get(owner), n.name)
    found, why = split_labels(it.tracker, lab[1], call) if _name(n) != "unbind" else (None, "one channel per part")
    if found is None:
        it.tracker.lock_labels(lab, f"kept channels split by {_describe(n)}: {why}", _where(n))
    return labelled_parts(lab[0], found, len(value))


def _caller(n: fx.Node) -> str:
    """The path of the module whose forward made call ``n`` ("" for the model's own forward)."""
    stack = n.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


# --------------------------------------------------------------------------- channel counts read as sizes
#
# ``B, N, C = x.shape; ...; y.reshape(B, N, C)`` ties y's dim to x's channel count: when y does
# not carry those channels there, pruning x would break the reshape, so x's channels are kept
# (where y does carry channels of the same count there, the two are coupled).


def _track_size(it: _LabelInterpreter, n: fx.Node) -> None:
    """Remember ``x.shape`` / ``x.size(d)`` / ``shape[d]`` values that are a labelled dim's size."""
    src = n.args[0] if n.args else None
    lab = _lab(it, src)
    if n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] == "shape":
        if lab is not None:
            it.sizes[n] = {lab[0]: lab[1]}
    elif n.op == "call_method" and _name(n) == "size" and lab is not None:
        d = _arg(n, 1, "dim")
        if d is None:
            it.sizes[n] = {lab[0]: lab[1]}
        elif isinstance(d, int) and _norm_dim(d, _val(it, src).dim()) == lab[0]:
            it.sizes[n] = lab[1]
    elif (n.target is operator.getitem and isinstance(src, fx.Node) and isinstance(it.sizes.get(src), dict)
          and isinstance(n.args[1], int)):
        found = it.sizes[src].get(_norm_dim(n.args[1], len(_val(it, src))))
        if found is not None:
            it.sizes[n] = found


def _same_channels(tr: Tracker, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tag vectors hold the same coupled channels, in any order (their counts stay equal)."""
    return sorted(tr.uf.find(int(t)) for t in a) == sorted(tr.uf.find(int(t)) for t in b)


def _counts_as_sizes(it: _LabelInterpreter, n: fx.Node, out: Labels | None, ndim: int) -> None:
    """Channel counts given as reshape sizes: coupled with the output's channels there, else kept."""
    if _name(n) == "flatten":
        return
    if _name(n) in AS_SHAPE:  # the sizes of another tensor, whose channels are then the count
        other = _lab(it, n.args[1]) if len(n.args) > 1 else None
        if not isinstance(other, tuple):
            return
        if out is not None and out[0] == other[0] and len(out[1]) == len(other[1]):
            if not _same_channels(it.tracker, out[1], other[1]):
                it.tracker.uf.union_pairs(out[1], other[1])
        else:
            it.tracker.lock_labels(other, f"kept channels whose count sizes {_describe(n)}", _where(n))
        return
    given: Any = n.args[1:] if len(n.args) > 1 else n.kwargs.get("shape", ())
    shape = list(given)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    for k, size in enumerate(shape):
        tags = it.sizes.get(size) if isinstance(size, fx.Node) else None
        if not isinstance(tags, torch.Tensor):
            continue
        if out is not None and out[0] == k and len(shape) == ndim and len(out[1]) == len(tags):
            if not _same_channels(it.tracker, out[1], tags):  # the same channels (a shuffle): counts agree
                it.tracker.uf.union_pairs(out[1], tags)
        else:
            it.tracker.lock_labels((0, tags), f"kept channels whose count sizes {_describe(n)}", _where(n))


# --------------------------------------------------------------------------- module handlers


def _module(it: _LabelInterpreter, n: fx.Node, m: nn.Module, value: Any) -> Any:
    path = str(n.target)
    inputs = [*n.args, *n.kwargs.values()]
    src = inputs[0] if inputs else None
    layout = layout_of(m)
    if layout is not None:
        return _attention(it, n, path, layout, value)
    for extra in inputs[1:]:  # only the first input's channels are followed through a module
        it.tracker.lock_labels(_lab(it, extra), f"kept channels of a second input to {_describe(n)}", _where(n))
    lab, x = _lab(it, src), _val(it, src)
    if isinstance(m, CONVS):
        return _conv(it.tracker, path, m, lab)
    if isinstance(m, nn.Embedding):
        return _embedding(it, n, f"{path}.weight" if path else "weight", m.embedding_dim, lab, value)
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
            it.tracker.lock_labels(lab, f"kept channels reshaped by {_describe(n)}", _where(n))
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
            tr.lock_labels(lab, f"kept channels of {_describe(n)}", _where(n))
        return lab
    if isinstance(m, nn.PReLU):
        return lab
    if isinstance(m, nn.GroupNorm):
        return _group_norm(tr, path, m, lab)
    if isinstance(m, nn.LayerNorm):
        return _layer_norm_module(it, n, path, m, lab, value)
    tr.lock_labels(lab, f"kept channels reaching {_describe(n)}", _where(n))
    return None


def _softmax_module(it: _LabelInterpreter, n: fx.Node, m: nn.Softmax | nn.LogSoftmax, lab: Labels,
                    value: torch.Tensor) -> Labels | None:
    nd = value.dim()
    if m.dim is None or _norm_dim(m.dim, nd) == lab[0]:
        it.tracker.lock_labels(lab, f"kept channels normalised by {_describe(n)}", _where(n))
        return None
    return lab


def _group_norm(tr: Tracker, path: str, m: nn.GroupNorm, lab: Labels) -> Labels:
    """GroupNorm statistics span a group: a whole group is kept or removed (with one group, as
    with a LayerNorm, channels go alone and the statistics are over the kept ones)."""
    if lab[0] != 1:
        tr.lock_labels(lab)
        return lab
    if m.num_groups > 1:
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
    if m.groups > 1 and (m.in_channels == m.groups or path in tr.whole_groups):  # whole groups (depthwise)
        rows = torch.cat([lab[1].reshape(m.groups, -1), out.reshape(m.groups, -1)], dim=1)
        tr.uf.union_rows(rows)
    elif m.groups > 1:  # grouped: the same position in every group goes together (groups are kept)
        tr.grouped.add(path)
        tr.uf.union_rows(lab[1].reshape(m.groups, -1).T)
        tr.uf.union_rows(out.reshape(m.groups, -1).T)
    return (1, out)


def _linear(tr: Tracker, path: str, m: nn.Linear, lab: Labels | None, x: Any) -> Labels | None:
    """Linear layers act on the last dim; labels on another dim pass through untouched."""
    nd = x.dim() if isinstance(x, torch.Tensor) else 2
    if lab is not None and lab[0] != nd - 1:
        if not all(tr.uf.is_locked(int(t)) for t in lab[1]):
            return lab
        lab = None  # kept channels on another dim (a (batch, tokens, features) input's tokens): only ours move
    out = tr.produce(path, m.out_features)
    tr.record(path, "out", out)
    if lab is not None:
        tr.record(path, "in", lab[1])
    return (nd - 1, out)


def _layer_norm_module(it: _LabelInterpreter, n: fx.Node, path: str, m: nn.LayerNorm, lab: Labels,
                       value: torch.Tensor) -> Labels:
    """A LayerNorm over the channels (the last dim): its weight, bias and normalized_shape shrink with them."""
    k = len(m.normalized_shape)
    if lab[0] < value.dim() - k:
        return lab
    if k == 1:
        it.tracker.record(path, "norm", lab[1])
        return lab
    it.tracker.lock_labels(lab, f"kept channels normalised together by {_describe(n)}", _where(n))
    return lab


# --------------------------------------------------------------------------- parameters the graph reads
#
# A module that calls F.batch_norm / F.linear / F.conv2d ... on its own parameters (timm's
# BatchNormAct2d, torchvision's LayerNorm2d), or multiplies channels by a parameter (ConvNeXt's
# layer scale), is traced through: its parameters are get_attr nodes. Their channels are followed
# as for the module form (records on the owning module when it is the matching nn class), or as
# dims of the parameter itself (param_key records, sliced by the surgery).

# (parameter path, for each tensor dim the parameter dim it is (None: a broadcast dim), parameter shape)
Provenance: TypeAlias = tuple[str, tuple["int | None", ...], tuple[int, ...]]
PARAM_VIEWS = {"unsqueeze", "squeeze", "reshape", "view", "flatten", "expand", "expand_as", "permute"}


def _hashable(target: Any) -> bool:
    try:
        hash(target)
    except TypeError:
        return False
    return True


def _track_param(it: _LabelInterpreter, n: fx.Node, value: Any) -> None:
    """Remember which parameter (and which of its dims) an unlabelled tensor is a view of."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return
    if n.op == "get_attr":
        it.params[n] = (str(n.target), tuple(range(value.dim())), tuple(value.shape))
        return
    name = _name(n)
    if n.op not in ("call_function", "call_method") or not (name in POINTWISE or name in PARAM_VIEWS):
        return
    src = n.args[0] if n.args else None
    prov = it.params.get(src) if isinstance(src, fx.Node) else None
    others = [a for a in _nodes(n) if a is not src and isinstance(_val(it, a), torch.Tensor)]
    x = _val(it, src)
    if prov is None or (others and name != "expand_as") or not isinstance(x, torch.Tensor):
        return
    dims = _param_dims(n, prov[1], tuple(x.shape), tuple(value.shape))
    if dims is not None:
        it.params[n] = (prov[0], dims, prov[2])


def _param_dims(n: fx.Node, dims: tuple[int | None, ...], src: tuple[int, ...],
                out: tuple[int, ...]) -> tuple[int | None, ...] | None:
    """Parameter dims of ``out`` (a permute, broadcast or reshape of ``src``), None if they mix."""
    if _name(n) == "permute":
        return tuple(dims[_norm_dim(o, len(src))] for o in _perm_order(n))
    lead = len(out) - len(src)
    if lead >= 0 and all(s in (1, out[lead + i]) for i, s in enumerate(src)):
        return (None,) * lead + tuple(d if s == out[lead + i] else None for i, (d, s) in enumerate(zip(dims, src)))
    a = [i for i, s in enumerate(src) if s != 1]
    b = [j for j, s in enumerate(out) if s != 1]
    if [src[i] for i in a] != [out[j] for j in b]:
        return None
    res: list[int | None] = [None] * len(out)
    for i, j in zip(a, b):
        res[j] = dims[i]
    return tuple(res)


def _param_channels(it: _LabelInterpreter, a: Any, k: int, tags: torch.Tensor) -> bool:
    """Couple dim ``k`` of ``a`` (a view of a parameter) with ``tags``; False if ``a`` is no parameter view."""
    prov = it.params.get(a) if isinstance(a, fx.Node) else None
    if prov is None or not 0 <= k < len(prov[1]):
        return False
    pdim = prov[1][k]
    if pdim is None or prov[2][pdim] != len(tags):
        return False
    it.tracker.record(param_key(prov[0], pdim), "param", tags)
    return True


def _param_parts(it: _LabelInterpreter, n: fx.Node, parts: list, labs: list, d: int, nd: int) -> list:
    """Concatenated parameters (class tokens) take the channels of the other parts on dim ``d``."""
    tags = next(lab[1] for lab in labs if lab is not None)
    out = []
    for a, lab in zip(parts, labs):
        x = _val(it, a)
        if lab is None and isinstance(x, torch.Tensor) and _param_channels(it, a, d - (nd - x.dim()), tags):
            lab = (d, tags)
        out.append(lab)
    if all(lab is not None for lab in out):
        it.followed.add(n)
    return out


def _escaped_params(it: _LabelInterpreter) -> set[str]:
    """Parameters some op reads without following their channels (they must keep their size)."""
    memo: dict[fx.Node, bool] = {}

    def followed(node: fx.Node) -> bool:
        if node not in memo:
            memo[node] = all(u in it.followed or _metadata(u) or (u in it.params and followed(u)) for u in node.users)
        return memo[node]

    return {str(n.target) for n in list(it.params) if n.op == "get_attr" and not followed(n)}


def _metadata(n: fx.Node) -> bool:
    """``p.dtype`` / ``p.device``: reads nothing of a parameter's channels."""
    return n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] in ("dtype", "device")


def _attr(a: Any) -> str | None:
    """The parameter path a node reads directly (a get_attr), else None."""
    return str(a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else None


def _owner(it: _LabelInterpreter, params: dict[str, Any], kind: Any) -> tuple[str, nn.Module] | None:
    """The module whose own attributes ``params`` are (a BatchNorm's weight, running_mean ...), if a ``kind``."""
    targets = {k: _attr(a) for k, a in params.items() if a is not None}
    if not targets or any(t is None for t in targets.values()):
        return None
    owners = {str(t).rpartition(".")[0] for t in targets.values()}
    if len(owners) != 1:
        return None
    path = owners.pop()
    if any(t != (f"{path}.{k}" if path else k) for k, t in targets.items()):
        return None
    m = getattr(it.module, "meta", {}).get(MODULES_KEY, {}).get(path)
    return (path, m) if isinstance(m, kind) else None


def _norm_params(it: _LabelInterpreter, n: fx.Node, tags: torch.Tensor, params: dict[str, Any], kind: Any,
                 needs_owner: bool) -> bool:
    """Follow per-channel norm parameters: the owner's "norm" record, or each parameter's dim 0."""
    present = {k: a for k, a in params.items() if isinstance(a, fx.Node)}
    if not present:
        return not needs_owner
    if any(not isinstance(_val(it, a), torch.Tensor) or _val(it, a).shape != (len(tags),) for a in present.values()):
        return False
    owner = _owner(it, present, kind)
    if owner is not None:
        it.tracker.record(owner[0], "norm", tags)
    elif needs_owner or not all(_param_channels(it, a, 0, tags) for a in present.values()):
        return False
    it.followed.add(n)
    return True


def _norm_call(it: _LabelInterpreter, n: fx.Node, params: dict[str, Any], kind: Any,
               needs_owner: bool = False) -> Labels | None:
    """F.batch_norm / F.instance_norm: per-channel statistics and parameters on dim 1."""
    lab = _lab(it, n.args[0] if n.args else n.kwargs.get("input"))
    if lab is None or lab[0] != 1:
        it.followed.add(n)
        return lab
    if not _norm_params(it, n, lab[1], params, kind, needs_owner):
        _lock_inputs(it, n, f"{_describe(n)} (its parameters are not one norm module's own)")
    return lab


def _f_batch_norm(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    params = {k: _arg(n, i, k) for i, k in enumerate(("running_mean", "running_var", "weight", "bias"), start=1)}
    return _norm_call(it, n, params, CHANNEL_NORMS)


def _f_group_norm(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    lab, groups = _lab(it, n.args[0]), _val(it, _arg(n, 1, "num_groups"))
    if lab is not None and lab[0] == 1 and isinstance(groups, int) and groups > 1 and len(lab[1]) % groups == 0:
        it.tracker.uf.union_rows(lab[1].reshape(groups, -1))
    return _norm_call(it, n, {"weight": _arg(n, 2, "weight"), "bias": _arg(n, 3, "bias")}, nn.GroupNorm, True)


def _f_layer_norm(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    """F.layer_norm over the channels: only a LayerNorm module's own call (normalized_shape is its attribute)."""
    lab = _lab(it, n.args[0])
    shape = _val(it, _arg(n, 1, "normalized_shape"))
    k = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    if lab is None or lab[0] < value.dim() - k:
        it.followed.add(n)
        return lab
    params = {"weight": _arg(n, 2, "weight"), "bias": _arg(n, 3, "bias")}
    if k != 1 or not _norm_params(it, n, lab[1], params, nn.LayerNorm, needs_owner=True):
        it.tracker.lock_labels(lab, f"kept channels normalised together by {_describe(n)}", _where(n))
    return lab


def _f_linear(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    src, w, b = n.args[0], _arg(n, 1, "weight"), _arg(n, 2, "bias")
    lab, x = _lab(it, src), _val(it, src)
    owner = _owner(it, {"weight": w, "bias": b}, nn.Linear)
    if owner is not None:
        it.followed.add(n)
        return _linear(it.tracker, owner[0], owner[1], lab, x)  # type: ignore[arg-type]
    if lab is not None and lab[0] != x.dim() - 1:
        return lab
    return _param_layer(it, n, w, b, lab, value.dim() - 1)


def _f_conv(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    src, w, b = n.args[0], _arg(n, 1, "weight"), _arg(n, 2, "bias")
    owner = _owner(it, {"weight": w, "bias": b}, CONVS)
    groups = _val(it, _arg(n, 6, "groups", 1))
    if owner is not None and getattr(owner[1], "groups", None) == groups:
        it.followed.add(n)
        return _conv(it.tracker, owner[0], owner[1], _lab(it, src))  # type: ignore[arg-type]
    lab = _lab(it, src)
    if groups != 1 or (lab is not None and lab[0] != 1):
        _lock_inputs(it, n, f"{_describe(n)} (a grouped or unowned convolution)")
        return None
    return _param_layer(it, n, w, b, lab, 1)


def _param_layer(it: _LabelInterpreter, n: fx.Node, w: Any, b: Any, lab: Labels | None, out_dim: int) -> Labels | None:
    """A linear / conv call on parameters of no matching module: weight dims 0 (out) and 1 (in) followed."""
    tr, wt, bt = it.tracker, _attr(w), _attr(b) if b is not None else ""
    weight = _val(it, w)
    if wt is None or bt is None or not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        _lock_inputs(it, n, f"{_describe(n)} (its weight is computed, not a parameter)")
        return None
    key = param_key(wt, 0)
    out = tr.produce(key, weight.shape[0])
    tr.record(key, "param", out)
    if bt:
        tr.record(param_key(bt, 0), "param", out)
    if lab is not None:
        tr.record(param_key(wt, 1), "param", lab[1])
    it.followed.add(n)
    return (out_dim, out)


def _f_embedding(it: _LabelInterpreter, n: fx.Node, value: torch.Tensor) -> Labels | None:
    w = _arg(n, 1, "weight")
    wt, weight = _attr(w), _val(it, w)
    if wt is None or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        _lock_inputs(it, n, f"{_describe(n)} (its weight is computed, not a parameter)")
        return None
    it.followed.add(n)
    return _embedding(it, n, wt, weight.shape[1], _lab(it, n.args[0]), value)


def _embedding(it: _LabelInterpreter, n: fx.Node, weight: str, dim: int, lab: Labels | None,
               value: Any) -> Labels | None:
    """An embedding table's columns are fresh channels on the output's last dim (its indices carry none)."""
    it.tracker.lock_labels(lab)
    if not isinstance(value, torch.Tensor):
        return None
    key = param_key(weight, 1)
    out = it.tracker.produce(key, dim)
    it.tracker.record(key, "param", out)
    return (value.dim() - 1, out)


_PARAM_HANDLERS: dict[Any, Callable[[_LabelInterpreter, fx.Node, torch.Tensor], Any]] = {
    F.batch_norm: _f_batch_norm, F.instance_norm: _f_batch_norm, F.group_norm: _f_group_norm,
    F.layer_norm: _f_layer_norm, torch.layer_norm: _f_layer_norm, torch.group_norm: _f_group_norm,
    F.linear: _f_linear, F.conv1d: _f_conv, F.conv2d: _f_conv, F.conv3d: _f_conv, F.embedding: _f_embedding,
}


# --------------------------------------------------------------------------- fx-wrapped functions
#
# A function registered with ``torch.fx.wrap`` (torchvision Swin's ``_patch_merging_pad``) is one
# call_function node whose body fx never saw. Its channels are followed by tracing that body on
# its own (non-tensor arguments as the constants they are here) and running the label
# propagation through it, as if fx had traced it in place; a body fx cannot trace, or one that
# reads parameters, keeps the channels reaching it (the call is not followed).

MAX_INLINE_DEPTH = 4  # wrapped functions calling wrapped functions, followed this deep


def _is_wrapped(n: fx.Node) -> bool:
    """A call of a plain Python function that is not torch's own (only fx-wrapped ones stay calls)."""
    t = n.target
    module = getattr(t, "__module__", None) or ""
    return (n.op == "call_function" and isinstance(t, types.FunctionType) and _name(n) not in _HANDLERS
            and module.partition(".")[0] != "torch")


class _Inline(nn.Module):
    """``fn`` with its tensor arguments taken from one list (the placeholder of its traced body)."""

    def __init__(self, fn: Callable, args: Any, kwargs: Any) -> None:
        super().__init__()
        self.fn, self.call_args, self.call_kwargs = fn, args, kwargs

    def forward(self, xs: Any) -> Any:
        return self.fn(*_fill(self.call_args, xs), **_fill(self.call_kwargs, xs))


class _Slot(int):
    """The index of a tensor argument in the list a traced wrapped function receives."""


def _tensor_slots(it: _LabelInterpreter, tree: Any, found: list[fx.Node]) -> Any:
    """``tree`` (node arguments) with each tensor-valued node replaced by its :class:`_Slot` in
    ``found``, and every other node by its value here."""
    if isinstance(tree, fx.Node):
        if not isinstance(_val(it, tree), torch.Tensor):
            return _val(it, tree)
        found.append(tree)
        return _Slot(len(found) - 1)
    if isinstance(tree, (list, tuple)):
        items = [_tensor_slots(it, a, found) for a in tree]
        return tuple(items) if isinstance(tree, tuple) else items
    if isinstance(tree, dict):
        return {k: _tensor_slots(it, v, found) for k, v in tree.items()}
    return tree


def _fill(tree: Any, xs: Any) -> Any:
    """``tree`` with each :class:`_Slot` replaced by ``xs[slot]``."""
    if isinstance(tree, _Slot):
        return xs[int(tree)]
    if isinstance(tree, (list, tuple)):
        items = [_fill(a, xs) for a in tree]
        return tuple(items) if isinstance(tree, tuple) else items
    if isinstance(tree, dict):
        return {k: _fill(v, xs) for k, v in tree.items()}
    return tree


class _InlineInterpreter(_LabelInterpreter):
    """Label propagation through a wrapped function's traced body: its placeholder carries the
    caller's labels, and its output's labels are handed back instead of being locked."""

    def __init__(self, gm: fx.GraphModule, outer: _LabelInterpreter, labels: list) -> None:
        super().__init__(gm, outer.tracker, outer.mode, outer.shapes_only)
        self.depth = getattr(outer, "depth", 0) + 1
        self.seed = labels
        self.result: Any = None

    def run_node(self, n: fx.Node) -> Any:
        if n.op not in ("placeholder", "output"):
            return super().run_node(n)
        with self.mode:
            value = fx.Interpreter.run_node(self, n)
        if n.op == "placeholder":
            self.labels[n] = self.seed
        else:
            self.result = _lab_tree(self, n.args[0])
        return value


def _wrapped_call(it: _LabelInterpreter, n: fx.Node, value: Any) -> Any:
    """Labels of a wrapped function's output, followed through its body (see above)."""
    found: list[fx.Node] = []
    args, kwargs = _tensor_slots(it, n.args, found), _tensor_slots(it, dict(n.kwargs), found)
    if not any(_lab(it, a) is not None for a in found):
        return None
    body = None
    if getattr(it, "depth", 0) < MAX_INLINE_DEPTH and not any(a in it.params for a in found):
        with contextlib.suppress(Exception):  # fx raises many types; untraceable means not followed
            body = fx.symbolic_trace(_Inline(n.target, args, kwargs))  # type: ignore[arg-type]
    if body is None:
        if isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list))
                                               and any(isinstance(v, torch.Tensor) for v in value)):
            _lock_inputs(it, n, _describe(n))  # as for any op not followed (a number computed from a shape is none)
        return None
    for sub in body.graph.nodes:  # notes name the caller's module
        sub.meta.setdefault("nn_module_stack", n.meta.get("nn_module_stack", {}))
    inner = _InlineInterpreter(body, it, [_lab(it, a) for a in found])
    inner.run([_val(it, a) for a in found])
    it.followed.add(n)
    return inner.result
