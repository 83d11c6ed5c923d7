"""Physical surgery: shrink layers to the indices a :class:`Plan` keeps.

The result is the same model object with the same module classes and smaller tensors
(conv / linear weights and biases, BatchNorm / InstanceNorm / GroupNorm / LayerNorm / PReLU
parameters and running statistics, and single parameters a plan names by
:func:`~secateur.structured.tracker.param_key`, such as a layer scale or an embedding table)
and the split sizes a module holds for its forward (:mod:`secateur.structured.splits`)
and updated ``in_channels`` / ``out_channels`` / ``groups`` / ``in_features`` /
``num_features`` / ``normalized_shape`` / ``embedding_dim`` ... attributes. No masks, no wrappers.

Surgery is atomic: every edit is computed and validated before any is applied, and when an
``example_input`` is given the shrunk model must run on it, otherwise every edit is undone
and :class:`UnsupportedModelError` is raised. Either way a failure leaves the model as it was.

After a successful surgery the model carries its plan over the *original* architecture (the
plan it already carried composed with this one, see :mod:`secateur.provenance`), which is
what :func:`secateur.io.storage.save_model` writes so that ``load_model`` can rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from secateur.errors import ConfigError, UnsupportedModelError
from secateur.provenance import record_plan, recorded_plan
from secateur.structured import attention, hf_hidden
from secateur.structured.plan import Plan, compose, relative
from secateur.structured.propagate import CHANNEL_NORMS, CONVS
from secateur.structured.splits import parse_size_key, size_edits
from secateur.structured.tracker import split_param_key

_Conv = nn.modules.conv._ConvNd  # CONVS
_Norm = (nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm | nn.GroupNorm | nn.LayerNorm
         | nn.PReLU)


_MISSING = object()


@dataclass
class _Edit:
    module: nn.Module
    name: str
    new: Any
    old: Any = None


def apply_plan(model: nn.Module, plan: Plan, example_input: torch.Tensor | None = None) -> nn.Module:
    """Shrink ``model`` in place to ``plan`` and return it (atomic; see module docstring).

    ``plan`` indexes the layers as they are now; the plan ``model`` carries afterwards is
    composed over the original architecture.
    """
    edits: list[_Edit] = []
    for path in sorted(set(plan.keep_out) | set(plan.keep_in)):
        if split_param_key(path) is None and parse_size_key(path) is None:
            module = _get(model, path)
            edits.extend(_module_edits(path, module, plan.keep_out.get(path), plan.keep_in.get(path)))
    edits.extend(_param_edits(model, plan))
    edits.extend(_Edit(m, name, sizes) for m, name, sizes in size_edits(model, plan.keep_out))
    edits = _rescaled(edits)
    _retie(model, edits)
    carried = _composed(model, plan)
    _swap(edits, forward=True)
    if example_input is not None:
        try:
            _check_runs(model, example_input)
        except Exception as err:
            _swap(edits, forward=False)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UnsupportedModelError(
                f"pruned model does not run ({type(err).__name__}: {first[:160]}); the model is unchanged"
            ) from None
    record_plan(model, carried)
    return model


def _composed(model: nn.Module, plan: Plan) -> dict:
    """The plan JSON ``model`` will carry after ``plan`` (checked before any edit is made)."""
    try:
        return compose(current_plan(model), plan).to_json()
    except (IndexError, KeyError):
        raise ConfigError("the plan this model carries does not match its layers (were layers replaced?); "
                          "forget it with secateur.provenance.record_plan(model, None)") from None


def current_plan(model: nn.Module) -> Plan:
    """The plan ``model`` carries over its original architecture (empty if it was never pruned)."""
    carried = recorded_plan(model)
    return Plan.from_json(carried) if carried is not None else Plan()


def reach_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Shrink ``model`` to ``plan``, a plan over its *original* architecture, whatever plan
    it carries already (a freshly built model, or one pruned part of the way)."""
    return apply_plan(model, relative(plan, current_plan(model)))


def _get(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"plan names layer {path!r}, which this model does not have") from None


def _check_runs(model: nn.Module, x: torch.Tensor) -> None:
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _swap(edits: list[_Edit], forward: bool) -> None:
    """Apply (or undo) edits; plain attribute assignment, so it cannot fail halfway."""
    for e in edits if forward else reversed(edits):
        if forward:
            e.old = _read(e.module, e.name)
        _write(e.module, e.name, e.new if forward else e.old)


def _read(module: nn.Module, name: str) -> Any:
    params, buffers = getattr(module, "_parameters", {}), getattr(module, "_buffers", {})  # or a config
    if name in params:
        return params[name]
    if name in buffers:
        return buffers[name]
    return getattr(module, name, _MISSING)  # an attribute surgery adds (LLaMA's num_heads) is removed on undo


def _write(module: nn.Module, name: str, value: Any) -> None:
    params, buffers = getattr(module, "_parameters", {}), getattr(module, "_buffers", {})  # or a config
    if name in params:
        params[name] = value
    elif name in buffers:
        buffers[name] = value
    elif value is _MISSING:
        module.__dict__.pop(name, None)
    else:
        object.__setattr__(module, name, value)


def _index(idx: list[int], size: int, path: str, what: str) -> torch.Tensor:
    if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= size:
        raise ConfigError(f"plan for {path!r} keeps invalid {what} indices (size {size}): "
                          f"need distinct values in [0, {size}), at least one")
    return torch.tensor(sorted(idx), dtype=torch.long)


def _sliced(t: torch.Tensor | None, dim: int, idx: torch.Tensor) -> Any:
    """A new Parameter / tensor holding ``t`` restricted to ``idx`` along ``dim``."""
    if t is None:
        return None
    new = t.detach().index_select(dim, idx.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        return nn.Parameter(new, requires_grad=t.requires_grad)
    return new


def _module_edits(path: str, m: nn.Module, out: list[int] | None, inp: list[int] | None) -> list[_Edit]:
    for kinds, fn in _EDITORS:
        if isinstance(m, kinds):
            return fn(path, m, out, inp)
    layer = attention.edits(path, m, out, inp)  # attention layers, Conv1D
    if layer is None:
        layer = hf_hidden.edits(path, m, out, inp)  # a Hugging Face base model: its config's hidden size
    if layer is not None:
        return [_Edit(module, name, value) for module, name, value in layer]
    raise ConfigError(f"plan prunes {path!r}, a {type(m).__name__}, which structured surgery cannot shrink")


def _rescaled(edits: list[_Edit]) -> list[_Edit]:
    """Resolve :class:`~secateur.structured.attention.Rescale` values: the tensor another edit
    gives (or the current one) times the factor, as one edit."""
    final: dict[tuple[int, str], _Edit] = {}
    kept: list[_Edit] = []
    for e in edits:
        if not isinstance(e.new, attention.Rescale):
            final[(id(e.module), e.name)] = e
            kept.append(e)
    for e in edits:
        if isinstance(e.new, attention.Rescale):
            base = final.get((id(e.module), e.name))
            target = base if base is not None else _Edit(e.module, e.name, _read(e.module, e.name))
            if base is None:
                kept.append(target)
                final[(id(e.module), e.name)] = target
            t = target.new
            scaled = t.detach() * e.new.factor
            target.new = nn.Parameter(scaled, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else scaled
    return kept


def _retie(model: nn.Module, edits: list[_Edit]) -> None:
    """Parameters tied before (GPT-2's ``lm_head`` and ``wte``) stay one Parameter: every place of a
    tied parameter must be cut alike (one new tensor for all), otherwise the plan is refused."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for m in model.modules():
        for name, p in m._parameters.items():
            if p is not None:
                places.setdefault(id(p), []).append((m, name))
    new = {(id(e.module), e.name): e for e in edits}
    for tied in (v for v in places.values() if len(v) > 1):
        cut = [new.get((id(m), name)) for m, name in tied]
        if all(e is None for e in cut):
            continue
        first = cut[0]
        if any(e is None or first is None or not _same(e.new, first.new) for e in cut):
            where = ", ".join(_name_of(model, m, n) for m, n in tied)
            raise ConfigError(f"plan cuts the tied parameters {where} differently: prune them as one group")
        for e in cut:
            assert e is not None and first is not None
            e.new = first.new


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)


def _name_of(model: nn.Module, m: nn.Module, name: str) -> str:
    return next((f"{p}.{name}" if p else name for p, sub in model.named_modules() if sub is m), name)


def _conv_edits(path: str, m: _Conv, out: list[int] | None, inp: list[int] | None) -> list[_Edit]:
    edits, w, groups = [], m.weight, m.groups
    o = _index(out, m.out_channels, path, "output") if out is not None else None
    i = _index(inp, m.in_channels, path, "input") if inp is not None else None
    if groups > 1:
        kept_groups, i = _group_edits(path, m, o, i)
        edits.append(_Edit(m, "groups", kept_groups))
    if o is not None:
        w = _sliced(w, 0, o)
        edits += [_Edit(m, "out_channels", len(o)), _Edit(m, "bias", _sliced(m.bias, 0, o))]
    if inp is not None:
        edits.append(_Edit(m, "in_channels", len(inp)))
    if i is not None:
        w = _sliced(w, 1, i)
    edits.append(_Edit(m, "weight", w if isinstance(w, nn.Parameter) else nn.Parameter(w)))
    return edits


def _group_edits(path: str, m: _Conv, o: torch.Tensor | None,
                 i: torch.Tensor | None) -> tuple[int, torch.Tensor | None]:
    """Kept groups of a grouped conv and the kept positions within each group's input.

    Either whole groups go, or the same input positions in every kept group (and as many
    outputs in every kept group); anything else cannot be expressed with ``groups``.
    """
    ipg, opg = m.in_channels // m.groups, m.out_channels // m.groups
    i = torch.arange(m.in_channels) if i is None else i
    o = torch.arange(m.out_channels) if o is None else o
    in_groups = {g: sorted((i[i // ipg == g] % ipg).tolist()) for g in (i // ipg).unique().tolist()}
    out_groups = (o // opg).tolist()
    counts = {g: out_groups.count(g) for g in set(out_groups)}
    positions = {tuple(v) for v in in_groups.values()}
    if set(in_groups) != set(counts) or len(positions) != 1 or len(set(counts.values())) != 1:
        raise ConfigError(f"plan for grouped conv {path!r} keeps neither whole groups nor the same channels "
                          "in every group")
    within = torch.tensor(positions.pop(), dtype=torch.long)
    return len(in_groups), (None if len(within) == ipg else within)


def _linear_edits(path: str, m: nn.Linear, out: list[int] | None, inp: list[int] | None) -> list[_Edit]:
    edits, w = [], m.weight
    if out is not None:
        o = _index(out, m.out_features, path, "output")
        w = _sliced(w, 0, o)
        edits += [_Edit(m, "out_features", len(o)), _Edit(m, "bias", _sliced(m.bias, 0, o))]
    if inp is not None:
        i = _index(inp, m.in_features, path, "input")
        w = _sliced(w, 1, i)
        edits.append(_Edit(m, "in_features", len(i)))
    edits.append(_Edit(m, "weight", w))
    return edits


def _norm_edits(path: str, m: _Norm, out: list[int] | None, inp: list[int] | None) -> list[_Edit]:
    if inp is not None or out is None:
        raise ConfigError(f"plan for norm layer {path!r} must only keep output channels")
    size = (m.num_channels if isinstance(m, nn.GroupNorm) else m.num_parameters if isinstance(m, nn.PReLU)
            else m.normalized_shape[-1] if isinstance(m, nn.LayerNorm) else m.num_features)
    o = _index(out, size, path, "channel")
    edits = [_Edit(m, name, _sliced(getattr(m, name), 0, o))
             for name in ("weight", "bias", "running_mean", "running_var") if getattr(m, name, None) is not None]
    if isinstance(m, nn.GroupNorm) and m.num_groups == 1:  # one group over every channel: like a LayerNorm
        return [*edits, _Edit(m, "num_channels", len(o))]
    if isinstance(m, nn.GroupNorm):
        per = m.num_channels // m.num_groups
        if len(o) % per:
            raise ConfigError(f"plan for GroupNorm {path!r} does not keep whole groups")
        return [*edits, _Edit(m, "num_channels", len(o)), _Edit(m, "num_groups", len(o) // per)]
    if isinstance(m, nn.PReLU):
        return [*edits, _Edit(m, "num_parameters", len(o))]
    if isinstance(m, nn.LayerNorm):
        return [*edits, _Edit(m, "normalized_shape", (len(o),))]
    return [*edits, _Edit(m, "num_features", len(o))]


def _param_edits(model: nn.Module, plan: Plan) -> list[_Edit]:
    """Slice the parameters / buffers a plan names by ``param_key`` (all dims of one tensor at once),
    then keep the size attributes of their module consistent."""
    dims: dict[str, dict[int, list[int]]] = {}
    for key, idx in [*plan.keep_out.items(), *plan.keep_in.items()]:
        found = split_param_key(key)
        if found is not None:
            dims.setdefault(found[0], {})[found[1]] = idx
    edits: list[_Edit] = []
    for target, cuts in sorted(dims.items()):
        owner_path, _, name = target.rpartition(".")
        owner = _get(model, owner_path)
        t = _read(owner, name) if hasattr(owner, name) else None
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"plan names parameter {target!r}, which this model does not have")
        for dim, idx in sorted(cuts.items()):
            if dim >= t.dim():
                raise ConfigError(f"plan slices dim {dim} of {target!r}, which has {t.dim()} dims")
            t = _sliced(t, dim, _index(idx, t.shape[dim], target, f"dim-{dim}"))
        edits.append(_Edit(owner, name, t))
        edits.extend(_attribute_edits(owner, name, t))
    return edits


def _attribute_edits(m: nn.Module, name: str, new: torch.Tensor) -> list[_Edit]:
    """Size attributes of a known layer whose ``weight`` changed shape through a parameter slice."""
    if name != "weight":
        return []
    if isinstance(m, nn.Embedding):
        return [_Edit(m, "embedding_dim", new.shape[1])]
    if isinstance(m, nn.Linear):
        return [_Edit(m, "out_features", new.shape[0]), _Edit(m, "in_features", new.shape[1])]
    if isinstance(m, _Conv):
        return [_Edit(m, "out_channels", new.shape[0]), _Edit(m, "in_channels", new.shape[1] * m.groups)]
    if isinstance(m, nn.LayerNorm):
        return [_Edit(m, "normalized_shape", tuple(new.shape))]
    if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
        return [_Edit(m, "num_features", new.shape[0])]
    return []


_EDITORS: list[tuple[tuple[type, ...], Callable[..., list[_Edit]]]] = [
    (CONVS, _conv_edits),
    ((nn.Linear,), _linear_edits),
    ((*CHANNEL_NORMS, nn.GroupNorm, nn.LayerNorm, nn.PReLU), _norm_edits),
]
