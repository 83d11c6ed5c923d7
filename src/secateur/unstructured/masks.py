"""Binary weight masks: the state of unstructured pruning.

A mask is a ``torch.nn.utils.parametrize`` parametrization (:class:`Mask`) on one parameter,
so ``module.weight`` *is* the masked tensor everywhere: in ``forward``, in ``state_dict``
round-trips, in ``deepcopy``. Design choices, and why:

* The effective tensor is ``torch.where(mask, original, 0)`` rather than ``original * mask``:
  pruned entries are exactly ``+0.0`` even if the stored value is ``inf``/``nan`` and never
  ``-0.0``; the gradient of the original is exactly 0 at pruned entries.
* Applying a mask also zeroes the stored original (``parametrizations.<name>.original``) at
  pruned positions, and :meth:`Mask.right_inverse` masks any value assigned to
  ``module.weight``. With an optimizer created *after* masking (or one passed to
  :func:`apply_masks` / :func:`mask_optimizer_state_`), the stored original then stays
  exactly 0 too: its gradient, its weight-decay term and its optimizer state are all 0.
* An optimizer that already holds momentum / Adam state from steps taken *before* the mask
  keeps moving the stored original at pruned positions unless that state is cleared: pass it
  as ``optimizer=`` (or call :func:`mask_optimizer_state_`). The effective weight, outputs,
  :func:`effective_state_dict`, checkpoints and :func:`make_permanent` are exact regardless,
  and :func:`reapply_masks_` re-zeroes a drifted original. We do not zero originals inside
  ``forward``: a side-effecting forward breaks ``functional_call`` / ``torch.func``.
* Masks only ever grow the pruned set: a new mask is combined with the old by logical AND.
* A tied parameter (one ``nn.Parameter`` registered under several names, e.g. a decoder
  sharing its encoder's weight) is masked under every name at once, by one shared
  :class:`Mask` object: the original stays one parameter (optimizers see it once, its
  gradient is 0 at pruned entries from every use), ``masks_of`` and checkpoints list each
  name with the same mask, and :func:`prunable_names` lists the tensor once.
* A tensor computed by another parametrization (``weight_norm``, ``spectral_norm``, ...) is
  refused: a checkpoint holds plain tensors, which would not load back into it.
* A masked module cannot be pickled (``torch.save(model)``): the error says to use
  ``secateur.save_model`` or :func:`make_permanent`. ``copy.deepcopy`` works, ties included.
* :func:`secateur.fit` trains through a cheaper path, :func:`trusted_masks`: the stored
  original and the optimizer's state are zeroed at pruned positions, each mask's forward
  returns the original as is (no ``where`` forward and backward), and the optimizer's
  gradients are multiplied by the keep-mask in place before every step. SGD (momentum,
  weight decay), Adam and AdamW then leave pruned entries exactly ``+0.0`` and every kept
  entry bitwise as the ``where`` path would. A mask changed (or moved) while trusted falls
  back to ``where`` at once and is trusted again at the next step, so pruning during
  training (the gradual schedule) stays exact.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn, cast

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from secateur.errors import ConfigError

Alias = tuple[str, nn.Module, str]  # (qualified name, owning module, attribute name) of one parameter name
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class Mask(nn.Module):
    """Parametrization that zeroes the pruned entries of a tensor (``mask`` False = pruned)."""

    mask: torch.Tensor  # a registered buffer (bool, the parameter's shape)
    trusted: tuple[int, int] | None  # (id, version) of the mask while :func:`trusted_masks` holds it

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.trusted = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trusted is not None and self.trusted == (id(self.mask), self.mask._version):
            return x  # trusted: the original is exactly 0 at pruned entries (see trusted_masks)
        return torch.where(self.mask, x, 0)

    def __getstate__(self) -> dict:
        """Copies (``deepcopy``) are never trusted: only :func:`trusted_masks` trusts, and only its own."""
        return {**super().__getstate__(), "trusted": None}

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        """Values assigned to ``module.<name>`` are stored masked, so pruned entries stay 0."""
        return torch.where(self.mask, value, 0)

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"kept={kept}/{self.mask.numel()}"


# --------------------------------------------------------------------------------------
# walking modules and resolving names


def _parametrizations(module: nn.Module) -> nn.ModuleDict:
    """``module.parametrizations`` (torch types ``Module.__getattr__`` as ``Tensor | Module``)."""
    return cast(nn.ModuleDict, module.parametrizations)


def _plist(module: nn.Module, name: str) -> ParametrizationList:
    """The parametrization list of ``module.<name>``."""
    return cast(ParametrizationList, _parametrizations(module)[name])


def _plain_modules(
    model: nn.Module, prefix: str = "", seen: set[int] | None = None, dedup: bool = True
) -> Iterator[tuple[str, nn.Module]]:
    """(qualified prefix, module) pairs, skipping the internals of parametrizations."""
    seen = set() if seen is None else seen
    if dedup:
        if id(model) in seen:
            return
        seen.add(id(model))
    yield prefix, model
    inner = model.parametrizations if parametrize.is_parametrized(model) else None
    for name, child in model._modules.items():
        if child is None or child is inner:
            continue
        yield from _plain_modules(child, f"{prefix}.{name}" if prefix else name, seen, dedup)


def _param_names(module: nn.Module) -> list[str]:
    """Plain names of a module's own parameters (parametrized ones under their plain name)."""
    names = [n for n, p in module._parameters.items() if p is not None]
    if parametrize.is_parametrized(module):
        names += [n for n in _parametrizations(module) if _from_parameters(_plist(module, n))]
    return names


def _from_parameters(plist: ParametrizationList) -> bool:
    """Whether a parametrized tensor is computed from parameters (weight_norm: two), not buffers."""
    if plist.is_tensor:
        return isinstance(plist.original, nn.Parameter)
    return all(isinstance(getattr(plist, f"original{i}"), nn.Parameter) for i in range(plist.ntensors))


def _parameter(module: nn.Module, name: str) -> torch.Tensor | None:
    """The parameter object behind ``module.<name>`` (the stored original when parametrized), if one."""
    if name in module._parameters:
        return module._parameters[name]
    if parametrize.is_parametrized(module, name) and _plist(module, name).is_tensor:
        return _plist(module, name).original
    return None


def _foreign(module: nn.Module, name: str) -> list[str]:
    """Class names of the parametrizations of ``module.<name>`` that are not secateur masks."""
    if not parametrize.is_parametrized(module, name):
        return []
    return [type(p).__name__ for p in _plist(module, name) if not isinstance(p, Mask)]


def _qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _alias_index(root: nn.Module) -> dict[int, list[Alias]]:
    """Parameter id -> every name under ``root`` that holds it (several when tied)."""
    index: dict[int, list[Alias]] = {}
    for prefix, owner in _plain_modules(root):
        for name in _param_names(owner):
            param = _parameter(owner, name)
            if param is not None:
                index.setdefault(id(param), []).append((_qualify(prefix, name), owner, name))
    return index


def _aliases(index: dict[int, list[Alias]], module: nn.Module, name: str, qualified: str) -> list[Alias]:
    """The names of the parameter behind ``module.<name>``: itself, and any tied to it in ``index``."""
    param = _parameter(module, name)
    return (index.get(id(param), []) if param is not None else []) or [(qualified, module, name)]


def _check_maskable(aliases: list[Alias]) -> None:
    """Refuse (one line) a tensor computed by another parametrization (weight_norm, spectral_norm, ...)."""
    for qualified, module, name in aliases:
        foreign = _foreign(module, name)
        if foreign:
            tied = f" (tied to {', '.join(q for q, _, _ in aliases if q != qualified)})" if len(aliases) > 1 else ""
            raise ConfigError(
                f"{qualified}{tied} is computed by a {' / '.join(foreign)} parametrization, which secateur cannot "
                f"mask; remove it first with torch.nn.utils.parametrize.remove_parametrizations(layer, {name!r}) "
                f"(it keeps the current value) or leave {qualified} out of the targets"
            )


def _plain_param_names(model: nn.Module) -> list[str]:
    """Every parameter of ``model`` by plain qualified name ("fc1.weight")."""
    out = []
    for prefix, module in _plain_modules(model):
        out += [f"{prefix}.{n}" if prefix else n for n in _param_names(module)]
    return out


def _unknown_name(model: nn.Module, qualified_name: str) -> ConfigError:
    valid = _plain_param_names(model)
    close = difflib.get_close_matches(qualified_name, valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"valid names include {', '.join(valid[:6])}"
    return ConfigError(
        f"model has no parameter {qualified_name!r}; {hint} (use masks.prunable_names(model) to list them)"
    )


def _resolve(model: nn.Module, qualified_name: str) -> tuple[nn.Module, str]:
    """(owning module, attribute name) of a parameter given by plain qualified name."""
    if not isinstance(qualified_name, str):
        raise ConfigError(f"parameter names must be strings, got {type(qualified_name).__name__}")
    prefix, _, name = qualified_name.rpartition(".")
    try:
        module = model.get_submodule(prefix)
    except AttributeError:
        raise _unknown_name(model, qualified_name) from None
    if name not in _param_names(module):
        raise _unknown_name(model, qualified_name)
    return module, name


def _current(module: nn.Module, name: str) -> torch.Tensor:
    """The current (effective) value of parameter ``name`` of ``module``; ConfigError if none."""
    if name not in _param_names(module):
        raise ConfigError(
            f"{type(module).__name__} has no parameter {name!r}; its parameters are: "
            f"{', '.join(_param_names(module)) or 'none'}"
        )
    with torch.no_grad():
        value = getattr(module, name)
    if isinstance(value, nn.parameter.UninitializedParameter):
        raise ConfigError(f"parameter {name!r} is not initialised yet; run one forward pass before masking")
    return value


def _find_mask(module: nn.Module, name: str) -> Mask | None:
    """The :class:`Mask` in the parametrization list of ``module.<name>``, if any."""
    if not parametrize.is_parametrized(module, name):
        return None
    return next((p for p in _plist(module, name) if isinstance(p, Mask)), None)


def _iter_masks(model: nn.Module, dedup: bool = True) -> Iterator[tuple[str, nn.Module, str, Mask]]:
    """(qualified name, module, attribute name, Mask) for every masked parameter."""
    for prefix, module in _plain_modules(model, dedup=dedup):
        if not parametrize.is_parametrized(module):
            continue
        for name in list(_parametrizations(module).keys()):
            found = _find_mask(module, name)
            if found is not None:
                yield (f"{prefix}.{name}" if prefix else name), module, name, found


# --------------------------------------------------------------------------------------
# applying masks


def _as_keep(mask: object, like: torch.Tensor, where: str) -> torch.Tensor:
    """Validate ``mask`` against the parameter ``like``; a bool copy on its device."""
    if not isinstance(mask, torch.Tensor):
        raise ConfigError(f"mask for {where} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(like.shape):
        raise ConfigError(
            f"mask for {where} has shape {tuple(mask.shape)} but the parameter has shape "
            f"{tuple(like.shape)}; build the mask with the parameter's exact shape"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ConfigError(f"mask for {where} must be bool or hold only 0 and 1")
        mask = mask != 0
    return mask.detach().to(device=like.device, copy=True)


def _zero_original(module: nn.Module, name: str, mask: Mask) -> None:
    """Zero the stored original at pruned positions (when the mask acts on it directly)."""
    plist = _plist(module, name)
    if plist[0] is mask and plist.is_tensor:
        with torch.no_grad():
            plist.original.masked_fill_(~mask.mask, 0)


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a private copy of its injected ``Parametrized*`` class.

    ``deepcopy`` shares that class between original and copy, and torch adds / deletes the
    parametrization properties *on the class*, so without this, pruning a copy further or
    making it permanent would break the original (and vice versa).
    """
    if not parametrize.is_parametrized(module):
        return
    cls = type(module)
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def _remove(module: nn.Module, name: str, leave_parametrized: bool) -> None:
    """``remove_parametrizations`` that cannot affect modules sharing the class."""
    _own_class(module)
    parametrize.remove_parametrizations(module, name, leave_parametrized=leave_parametrized)


def _refuse_pickle(self: nn.Module) -> NoReturn:
    """``__getstate__`` of a masked module: torch can only serialise parametrized modules by state_dict."""
    raise ConfigError("a model with secateur masks cannot be pickled (torch.save(model), pickle); save it with "
                      "secateur.save_model(model, path), or fold the masks in with secateur.make_permanent(model)")


def _register(module: nn.Module, name: str, mask: Mask) -> None:
    """Register ``mask`` (this very object) as the parametrization of ``module.<name>``."""
    _own_class(module)
    parametrize.register_parametrization(module, name, mask)
    type(module).__getstate__ = _refuse_pickle  # type: ignore[method-assign]  # its own class (injected / _own_class)


def _attach(aliases: list[Alias], keep: torch.Tensor) -> None:
    """One :class:`Mask` on every alias of a parameter, ANDed with ``keep`` and any mask they had.

    Tied aliases share the Mask object, so a later AND (here or through either name) reaches both.
    """
    existing = list({id(m): m for m in (_find_mask(mod, n) for _, mod, n in aliases) if m is not None}.values())
    for old in existing:
        keep = keep & old.mask
    for old in existing:
        old.mask.copy_(keep)
    shared = existing[0] if existing else Mask(keep)
    for _, module, name in aliases:
        if _find_mask(module, name) is None:
            _register(module, name, shared)
        _zero_original(module, name, cast(Mask, _find_mask(module, name)))


def _prepare(index: dict[int, list[Alias]], module: nn.Module, name: str, where: str,
             mask: object) -> tuple[list[Alias], torch.Tensor]:
    """The aliases of ``module.<name>`` and the validated keep-mask; nothing applied yet."""
    value = _current(module, name)
    aliases = _aliases(index, module, name, where)
    _check_maskable(aliases)
    return aliases, _as_keep(mask, value, where)


def apply_mask(
    module: nn.Module, name: str, mask: torch.Tensor, *, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Mask parameter ``name`` of ``module`` (True/1 = keep); combined by AND with any old mask.

    Names tied to the same parameter inside ``module`` are masked with it (for ties across
    modules, give the whole model to :func:`apply_masks`). Pass the ``optimizer`` that trains
    ``module`` to clear its state at pruned positions.
    """
    _attach(*_prepare(_alias_index(module), module, name, f"{type(module).__name__}.{name}", mask))
    if optimizer is not None:
        mask_optimizer_state_(optimizer, module)


def apply_masks(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    *,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Apply masks by qualified name ("features.0.weight"); all are validated before any is applied.

    A tied parameter is masked under all its names, whichever one is given.
    """
    if not isinstance(masks, Mapping):
        raise ConfigError(f"masks must be a mapping of parameter name -> tensor, got {type(masks).__name__}")
    prepared, index = [], _alias_index(model)
    for qualified, mask in masks.items():
        module, name = _resolve(model, qualified)
        prepared.append(_prepare(index, module, name, qualified, mask))
    for aliases, keep in prepared:
        _attach(aliases, keep)
    if optimizer is not None:
        mask_optimizer_state_(optimizer, model)


def mask_optimizer_state_(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Zero, at pruned positions, the stored originals of ``model`` and every optimizer state
    tensor of the same shape (momentum, Adam moments); returns how many parameters it touched.

    Call it when masks are applied to a model whose optimizer has already taken steps, so the
    old state cannot move the stored originals away from 0.
    """
    keep_of = {}
    for _, module, name, mask in _iter_masks(model):
        plist = _plist(module, name)
        if plist[0] is mask and plist.is_tensor:
            keep_of[id(plist.original)] = mask.mask
    touched = 0
    with torch.no_grad():
        for group in optimizer.param_groups:
            for param in group["params"]:
                keep = keep_of.get(id(param))
                if keep is None:
                    continue
                param.masked_fill_(~keep, 0)
                _clear_state(optimizer, param, ~keep)
                touched += 1
    return touched


def _trusted_originals(model: nn.Module) -> dict[int, tuple[nn.Parameter, Mask, list[tuple[nn.Module, str]]]]:
    """Parameter id -> (stored original, its Mask, its (module, name) uses) for masks acting on it alone."""
    found: dict[int, tuple[nn.Parameter, Mask, list[tuple[nn.Module, str]]]] = {}
    for _, module, name, mask in _iter_masks(model):
        plist = _plist(module, name)
        if len(plist) == 1 and plist.is_tensor and isinstance(plist.original, nn.Parameter):
            found.setdefault(id(plist.original), (plist.original, mask, []))[2].append((module, name))
    return {key: entry for key, entry in found.items() if entry[0].requires_grad}


@dataclass
class _Trusted:
    """One stored original trained under :func:`trusted_masks`, and its keep-mask as a float tensor."""

    param: nn.Parameter
    mask: Mask
    uses: list[tuple[nn.Module, str]]
    keep: torch.Tensor | None = None


def _stamp(mask: Mask) -> tuple[int, int]:
    """What identifies a mask's current value: its tensor (moved: another) and that tensor's version."""
    return id(mask.mask), mask.mask._version


def _trust(entry: _Trusted, optimizer: torch.optim.Optimizer) -> None:
    """Trust one mask as it is now: its original and the optimizer's state zeroed at pruned positions."""
    with torch.no_grad():
        pruned = ~entry.mask.mask
        entry.param.masked_fill_(pruned, 0)
        _clear_state(optimizer, entry.param, pruned)
    entry.keep = entry.mask.mask.to(entry.param.dtype)
    entry.mask.trusted = _stamp(entry.mask)


def _before_step(entries: list[_Trusted], optimizer: torch.optim.Optimizer) -> None:
    """Re-trust masks changed since the last step (their forward ran ``where``), then mask the gradients."""
    for entry in entries:
        if entry.mask.trusted != _stamp(entry.mask):
            _trust(entry, optimizer)
    present = [(e.param.grad, e.keep) for e in entries if e.param.grad is not None and e.keep is not None]
    if present:
        with torch.no_grad():
            torch._foreach_mul_([grad for grad, _ in present], [keep for _, keep in present])


@contextlib.contextmanager
def trusted_masks(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[int]:
    """Train ``model``'s masked weights without recomputing weight x mask; yields how many are trusted.

    For an elementwise ``optimizer`` (SGD, Adam, AdamW): the stored originals and the
    optimizer's state are zeroed at pruned positions, every mask's forward returns its
    original as is, and a step pre-hook multiplies the gradients by the keep-masks (after any
    data-parallel all-reduce). A mask changed meanwhile (pruning during training) computes
    ``where`` until the next step, which trusts it again the same way. On exit the masks
    compute ``where`` again. Parametrizations, names and checkpoints are untouched throughout.
    """
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    entries = [_Trusted(param, mask, uses) for key, (param, mask, uses) in _trusted_originals(model).items()
               if key in in_optimizer]
    for entry in entries:
        _trust(entry, optimizer)
    handle = optimizer.register_step_pre_hook(lambda *_: _before_step(entries, optimizer))
    try:
        yield len(entries)
    finally:
        handle.remove()
        for entry in entries:
            entry.mask.trusted = None
            for module, name in entry.uses:
                _zero_original(module, name, entry.mask)


def _clear_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, pruned: torch.Tensor) -> None:
    """Zero, at ``pruned`` positions, every optimizer state tensor of ``param``'s shape (momentum, moments)."""
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.masked_fill_(pruned.to(value.device), 0)


def reapply_masks_(model: nn.Module) -> None:
    """Re-zero every stored original at its pruned positions (e.g. after stale optimizer steps)."""
    for _, module, name, mask in _iter_masks(model):
        _zero_original(module, name, mask)


def clear_masks(model: nn.Module) -> nn.Module:
    """Remove every mask, keeping the stored originals as the plain parameters; returns model.

    Other (non-mask) parametrizations are kept. Used before loading a checkpoint's masks.
    """
    for _, module, name, mask in list(_iter_masks(model)):
        plist = _plist(module, name)
        if len(plist) == 1:
            _remove(module, name, leave_parametrized=False)
        else:
            del plist[next(i for i, p in enumerate(plist) if p is mask)]
    return model


# --------------------------------------------------------------------------------------
# reading masks and effective values


def mask_of(module: nn.Module, name: str) -> torch.Tensor | None:
    """A copy of the bool keep-mask of ``module.<name>``, or None if it is not masked."""
    found = _find_mask(module, name)
    return None if found is None else found.mask.clone()


def is_masked(module: nn.Module, name: str) -> bool:
    """Whether ``module.<name>`` carries a mask."""
    return _find_mask(module, name) is not None


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Qualified parameter name -> copy of its bool keep-mask, for every masked parameter."""
    return {qualified: mask.mask.clone() for qualified, _, _, mask in _iter_masks(model)}


def prunable_names(
    model: nn.Module, include_bias: bool = False, types: tuple[type, ...] | None = None
) -> list[str]:
    """Qualified names of the weights (and optionally biases) of Linear / Conv / ConvTranspose
    layers, or of the layer ``types`` given, in module order. BatchNorm etc. are left alone.

    A tied parameter is listed once (under its first name); a tensor computed by another
    parametrization (``weight_norm``, ...) is left out, since it cannot be masked.
    """
    types = PRUNABLE_TYPES if types is None else tuple(types)
    wanted = ("weight", "bias") if include_bias else ("weight",)
    out, seen = [], set()
    for prefix, module in _plain_modules(model):
        if not isinstance(module, types):
            continue
        present = _param_names(module)
        for name in wanted:
            if name not in present or _foreign(module, name) or id(_parameter(module, name)) in seen:
                continue  # without a foreign parametrization, the name has a parameter object
            seen.add(id(_parameter(module, name)))
            out.append(_qualify(prefix, name))
    return out


def effective(model: nn.Module, qualified_name: str) -> torch.Tensor:
    """The effective (masked) value of a parameter by qualified name, detached."""
    module, name = _resolve(model, qualified_name)
    with torch.no_grad():
        return getattr(module, name).detach()


def _parametrized_groups(model: nn.Module) -> dict[str, tuple[nn.Module, str, str]]:
    """state_dict key prefix of each parametrization -> (module, name, plain key)."""
    groups = {}
    for prefix, module in _plain_modules(model, dedup=False):
        if parametrize.is_parametrized(module):
            p = f"{prefix}." if prefix else ""
            for name in _parametrizations(module):
                groups[f"{p}parametrizations.{name}."] = (module, name, f"{p}{name}")
    return groups


def _group_of(key: str, groups: Mapping[str, tuple[nn.Module, str, str]]) -> tuple | None:
    """The parametrization group that state_dict ``key`` belongs to, if any."""
    marker = "parametrizations."
    start = key.find(marker)
    while start != -1:
        if start == 0 or key[start - 1] == ".":
            name_end = key.find(".", start + len(marker))
            hit = groups.get(key[: name_end + 1]) if name_end != -1 else None
            if hit is not None:
                return hit
        start = key.find(marker, start + 1)
    return None


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` under plain keys ("fc1.weight"), holding effective (masked)
    values; buffers included. Loads into an unmasked model of the same architecture."""
    groups = _parametrized_groups(model)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            hit = _group_of(key, groups)
            if hit is None:
                out[key] = value
            elif hit[2] not in out:
                out[hit[2]] = getattr(hit[0], hit[1]).detach()
    return out


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its plain parameter; the model becomes ordinary modules of their
    original classes (parameter objects kept, so optimizers still work). Returns ``model``.

    A parameter that also carries non-mask parametrizations has them folded in as well.
    """
    for _, module, name, _ in list(_iter_masks(model)):
        if parametrize.is_parametrized(module, name):
            _remove(module, name, leave_parametrized=True)
    return model
