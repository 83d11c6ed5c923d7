"""Checkpoints as safetensors + JSON (never pickle), and atomic file writes.

One format for every model secateur writes: dense, masked (unstructured) and structurally
pruned. A checkpoint ``<base>`` is two files written side by side:

* ``<base>.safetensors``: the model's effective (masked) ``state_dict`` under plain keys, plus
  every mask as a bool tensor under ``"__mask__.<qualified name>"``;
* ``<base>.json``, the header: the caller's ``meta`` plus these keys (``KEY_*`` below):

  - ``format`` (``"secateur.checkpoint"``) and ``format_version`` (1);
  - ``model``: ``{"name": ..., "args": {...}}``, the factory call that rebuilds the *original*
    architecture (``secateur.zoo.models.build_model(name, **args)``);
  - ``plan``: for a structurally pruned model, its ``Plan.to_json()`` over that original
    architecture (absent or null for dense and masked models);
  - ``masks``: the qualified names of the masked tensors (empty if unmasked);
  - ``tensors``: the number of tensors in the safetensors file, and ``sha256``: its checksum,
    so a tensors file from another save, or a truncated one, is caught with a one-line error;
  - ``versions``: at least ``secateur`` and ``torch`` of the writer.

``model`` and ``plan`` come from ``meta`` when given, else from what the model carries
(:mod:`secateur.provenance`: ``build_model`` records the factory, structured surgery the
plan), so ``save_model(model, path)`` then ``load_model(path)`` rebuilds any secateur-built
model with no other argument: build the original, apply the plan, load the tensors, apply the
masks, switch to eval mode. Plans are applied by the function registered for their
``format`` in :data:`PLAN_FORMATS` (``secateur.structured`` registers its own), so this
module does not depend on the structured pruning code.

Loading reads the bytes once, checks them, and parses them with ``safetensors`` only: no
``pickle``, no ``torch.load``. Every write goes to a temporary file in the same folder, is
fsynced and then renamed over the target, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from secateur import __version__
from secateur.errors import (
    CheckpointError,
    ConfigError,
    SecateurError,
    UnknownNameError,
)
from secateur.io.schemas import CHECKPOINT_HINT, CheckpointHeader, check
from secateur.provenance import Factory, record_model, record_plan, recorded_model, recorded_plan
from secateur.registry import Registry
from secateur.train import TRAIN_OPTIONS
from secateur.unstructured.masks import (
    apply_masks,
    clear_masks,
    effective_state_dict,
    masks_of,
)
from secateur.zoo.models import build_model, rebuild_args

FORMAT = "secateur.checkpoint"
FORMAT_VERSION = 1
MASK_PREFIX = "__mask__."

KEY_FORMAT, KEY_FORMAT_VERSION = "format", "format_version"
KEY_MODEL, KEY_PLAN, KEY_MASKS = "model", "plan", "masks"
KEY_TENSORS, KEY_SHA256, KEY_VERSIONS = "tensors", "sha256", "versions"
REQUIRED_KEYS = (KEY_FORMAT, KEY_FORMAT_VERSION, KEY_MASKS, KEY_TENSORS)

PlanApplier = Callable[[nn.Module, Mapping[str, Any]], None]
"""Shrinks a model (original architecture, or pruned part of the way) to a plan's JSON."""

PLAN_FORMATS: Registry[PlanApplier] = Registry("checkpoint plan format")

CheckpointReader = Callable[[Path], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]]
"""Reads a one-file model format: (plain tensors, bool masks, header with ``model`` / ``plan``)."""


@dataclass(frozen=True)
class FileFormat:
    """Another file a model loads from (e.g. a compact export): ``recognise(path)`` and ``read(path)``."""

    recognise: Callable[[Path], bool]
    read: CheckpointReader


FILE_FORMATS: Registry[FileFormat] = Registry("model file format", builtins=("secateur.export.compact",))
"""One-file model formats :func:`load_model` also reads, recognised by their content (never unpickled)."""


def is_other_format(path: Path | str) -> bool:
    """Whether ``path`` is a model file of a registered :data:`FILE_FORMATS` format (e.g. compact)."""
    return _other_format(path) is not None


def _other_format(path: Path | str) -> FileFormat | None:
    """The registered format of a file that is not a safetensors / JSON checkpoint, if any."""
    target = Path(path)
    if target.suffix in (".safetensors", ".json") or not target.is_file():
        return None
    return next((spec for spec in map(FILE_FORMATS.get, FILE_FORMATS.names()) if spec.recognise(target)), None)


# --------------------------------------------------------------------------------------
# atomic writes and JSON


def _fsync_dir(folder: Path) -> None:
    """Persist a rename on POSIX; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file and ``os.replace``; on any error the
    temp file is removed and an existing ``path`` is left untouched. Creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    """Plain values for common non-JSON types (paths, numpy / torch scalars, sets)."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _dumps(obj: Any, where: Path) -> str:
    """JSON text (indent 2, sorted keys); ConfigError naming the file if it cannot be encoded."""
    try:
        return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"cannot write {where}: {exc}; keep only numbers, strings, lists and dicts in it"
        ) from exc


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (indent=2, sorted keys); nested dicts are fine."""
    path = Path(path)
    atomic_write_text(path, _dumps(obj, path))


def read_json(path: Path | str) -> dict:
    """Read a JSON object; CheckpointError (one line) if it is missing, invalid or not an object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; check the path or re-run the step that writes it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} ({_one_line(exc)}); check the file") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); restore or re-create it"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, expected an object; restore or re-create it")
    return obj


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------
# saving


def checkpoint_paths(path: Path | str) -> tuple[Path, Path]:
    """(``<base>.safetensors``, ``<base>.json``) for ``runs/x/model``, ``runs/x/model.safetensors``
    or ``runs/x/model.json``; an existing folder means ``<folder>/model``."""
    base = Path(path)
    if base.is_dir():
        base = base / "model"
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def _tensors_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """Effective state and masks as contiguous CPU tensors that share no memory."""
    state = dict(effective_state_dict(model))
    state.update({MASK_PREFIX + n: m for n, m in masks_of(model).items()})
    return _detached(state)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The effective (masked) ``state_dict`` under the model's plain keys, no masks: contiguous
    CPU tensors that share no memory, ready for ``safetensors``."""
    return _detached(effective_state_dict(model))


def _detached(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """``state``'s tensors, detached, contiguous, on the CPU and sharing no memory."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"state entry {key!r} is a {type(value).__name__}, not a tensor; secateur checkpoints hold tensors only"
            )
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
            tensor = tensor.clone()  # tied / view tensors: safetensors refuses shared memory
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def save_model(model: nn.Module, path: Path | str, meta: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Save ``model`` (effective weights, buffers, masks) and ``meta`` as a checkpoint; returns
    (safetensors path, json path). ``meta["model"]`` / ``meta["plan"]`` default to what the
    model carries (see module docstring). Both files are encoded before either is written."""
    if meta is not None and not isinstance(meta, Mapping):
        raise ConfigError(f"meta must be a mapping (dict), got {type(meta).__name__}")
    st_path, js_path = checkpoint_paths(path)
    tensors = _tensors_to_save(model)
    data = safetensors.torch.save(tensors, metadata={"format": FORMAT})
    text = _dumps(_header(model, meta or {}, tensors, data), js_path)
    atomic_write_bytes(st_path, data)
    atomic_write_text(js_path, text)
    return st_path, js_path


def _header(model: nn.Module, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], data: bytes) -> dict:
    """The JSON header: ``meta``, what rebuilds the model, masks, versions and checksum."""
    header = dict(meta)
    record = header.get(KEY_MODEL)
    if record is None:
        record = recorded_model(model)
    if record is not None:
        header[KEY_MODEL] = record
    plan = header.get(KEY_PLAN)
    if plan is None:
        plan = recorded_plan(model)
    if plan is not None:
        header[KEY_PLAN] = plan.to_json() if hasattr(plan, "to_json") else plan  # a Plan, or its JSON
    versions = header.get(KEY_VERSIONS)
    header[KEY_VERSIONS] = {**(versions if isinstance(versions, Mapping) else {}),
                            "secateur": __version__, "torch": torch.__version__}
    header.update({
        KEY_FORMAT: FORMAT,
        KEY_FORMAT_VERSION: FORMAT_VERSION,
        KEY_MASKS: sorted(k[len(MASK_PREFIX):] for k in tensors if k.startswith(MASK_PREFIX)),
        KEY_TENSORS: len(tensors),
        KEY_SHA256: hashlib.sha256(data).hexdigest(),
    })
    return header


# --------------------------------------------------------------------------------------
# loading


def check_header(meta: dict, js_path: Path) -> None:
    """Raise CheckpointError (one line, naming the key) unless ``meta`` is a secateur checkpoint
    header we can read: its keys typed (:class:`~secateur.io.schemas.CheckpointHeader`), its
    training recipe valid options (:data:`~secateur.train.TRAIN_OPTIONS`)."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(
            f"{js_path} lacks {', '.join(missing)}; it was not written by secateur.io.storage.save_model, "
            "re-save the model"
        )
    header = check(CheckpointHeader, meta, js_path, hint=CHECKPOINT_HINT)
    if header.format != FORMAT:
        raise CheckpointError(
            f"{js_path} has format {header.format!r}, expected {FORMAT!r}; pass a secateur checkpoint"
        )
    if not 1 <= header.format_version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{js_path} has format_version {header.format_version!r}, this secateur reads {FORMAT_VERSION}; "
            "upgrade secateur or re-save"
        )
    if header.train is not None:
        TRAIN_OPTIONS.parse(header.train, js_path, at="train", hint=CHECKPOINT_HINT, error=CheckpointError)


def _read_tensors(st_path: Path, js_path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """Parse the safetensors file (no pickle) and check it against its JSON header."""
    try:
        data = st_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"{st_path} not found (its {js_path.name} exists); restore it or re-save the model"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {st_path} ({_one_line(exc)}); check the file") from exc
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types for bad headers / sizes
        raise CheckpointError(
            f"{st_path} is corrupt or truncated ({_one_line(exc)}); restore it or re-save the model"
        ) from exc
    digest = meta.get(KEY_SHA256)
    if digest is not None and digest != hashlib.sha256(data).hexdigest():
        raise CheckpointError(
            f"{st_path} does not match {js_path.name} (sha256 differs: modified, or from another save); "
            "re-save the model"
        )
    if len(tensors) != meta["tensors"]:
        raise CheckpointError(
            f"{st_path} holds {len(tensors)} tensors but {js_path.name} says {meta['tensors']}; re-save the model"
        )
    return tensors


def _split_masks(tensors: dict[str, torch.Tensor], meta: dict, st_path: Path) -> tuple[dict, dict]:
    """(plain tensors, bool masks), checking masks against the header and their targets."""
    ordered = sorted(tensors.items())
    plain = {k: v for k, v in ordered if not k.startswith(MASK_PREFIX)}
    masks = {k[len(MASK_PREFIX):]: v for k, v in ordered if k.startswith(MASK_PREFIX)}
    if sorted(masks) != sorted(meta["masks"]):
        raise CheckpointError(f"{st_path} masks do not match the names in its JSON header; re-save the model")
    for name, mask in masks.items():
        target = plain.get(name)
        if target is None or target.shape != mask.shape or mask.dtype not in (torch.bool, torch.uint8):
            raise CheckpointError(
                f"{st_path}: mask {name!r} has no matching tensor of shape {tuple(mask.shape)}; re-save the model"
            )
        masks[name] = mask.to(torch.bool)
    return plain, masks


def read_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(plain tensors, bool masks by qualified name, header) of a checkpoint, fully validated;
    no model is built (see :func:`load_model` for that). A file of another registered
    :data:`FILE_FORMATS` format (a compact export) is read by that format."""
    other = _other_format(path)
    if other is not None:
        return other.read(Path(path))
    st_path, js_path = checkpoint_paths(path)
    if not js_path.exists() and not st_path.exists():
        raise CheckpointError(f"no checkpoint at {st_path} / {js_path.name}; check the path (save with save_model)")
    meta = read_json(js_path)
    check_header(meta, js_path)
    tensors = _read_tensors(st_path, js_path, meta)
    plain, masks = _split_masks(tensors, meta, st_path)
    return plain, masks, meta


def _build(meta: dict, build: Factory | None, js_path: Path) -> nn.Module:
    """Rebuild the network described by ``meta["model"] = {"name": ..., "args": {...}}``."""
    spec = meta.get(KEY_MODEL)
    if (not isinstance(spec, dict) or not isinstance(spec.get("name"), str)
            or not isinstance(spec.get("args", {}), dict)):
        raise CheckpointError(
            f"{js_path} has no usable 'model' entry ({{'name': ..., 'args': {{...}}}}); "
            "pass model= with the saved architecture"
        )
    if build is None:
        return build_model(spec["name"], **rebuild_args(spec))
    return build(spec["name"], **spec.get("args", {}))


def _key_mismatch(model: nn.Module, tensors: Mapping[str, torch.Tensor], st_path: Path) -> str | None:
    """A one-line description of how ``tensors`` fail to fit ``model``, or None if they fit."""
    expected = effective_state_dict(model)
    missing = [k for k in expected if k not in tensors]
    unexpected = sorted(k for k in tensors if k not in expected)
    shapes = [k for k in expected if k in tensors and expected[k].shape != tensors[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            parts.append(f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})")
    if not parts:
        return None
    return f"{st_path} does not fit the model: {'; '.join(parts)}; load it into the architecture it was saved from"


def _apply_saved_plan(model: nn.Module, plan: Any, js_path: Path) -> None:
    """Shrink ``model`` to a structured pruning plan from a header (its format's applier)."""
    kind = plan.get("format") if isinstance(plan, Mapping) else None
    try:
        applier = PLAN_FORMATS.get(str(kind))
    except UnknownNameError:
        known = ", ".join(PLAN_FORMATS.names()) or "none (import secateur.structured)"
        raise CheckpointError(f"{js_path}: its plan has format {kind!r}, which this secateur cannot apply "
                              f"(known: {known}); upgrade secateur or re-save the model") from None
    try:
        applier(model, plan)
    except SecateurError as exc:
        raise CheckpointError(f"{js_path}: its pruning plan does not fit the model ({exc}); "
                              "load it into the architecture it was pruned from") from None


def _fill(model: nn.Module, plain: dict, masks: dict, st_path: Path) -> None:
    """Load ``plain`` strictly into ``model`` and replace its masks with ``masks``."""
    problem = _key_mismatch(model, plain, st_path)
    if problem:
        raise CheckpointError(problem)
    clear_masks(model)
    try:
        model.load_state_dict(plain, strict=True)
        apply_masks(model, masks)
    except (RuntimeError, ConfigError) as exc:
        raise CheckpointError(
            f"{st_path} does not fit the model ({_one_line(exc)}); use the saved architecture"
        ) from exc


def load_model(
    path: Path | str, model: nn.Module | None = None, *, build: Factory | None = None
) -> tuple[nn.Module, dict]:
    """Load a checkpoint into ``model`` (or one rebuilt from ``meta["model"]`` with ``build``,
    default ``secateur.zoo.models.build_model``); returns (model in eval mode, header).

    A structurally pruned checkpoint is rebuilt by applying its ``plan`` first (to the
    original architecture, or to a ``model`` pruned part of the way). Any masks ``model``
    already had are replaced by the checkpoint's, so outputs equal the saved model's. The
    model then carries the header's model record and plan, so it can be saved again as is."""
    st_path, js_path = checkpoint_paths(path)
    plain, masks, meta = read_checkpoint(path)
    if model is None:
        model = _build(meta, build, js_path)
    if meta.get(KEY_PLAN) is not None and _key_mismatch(model, plain, st_path):
        _apply_saved_plan(model, meta[KEY_PLAN], js_path)
    _fill(model, plain, masks, st_path)
    if isinstance(meta.get(KEY_MODEL), Mapping):
        record_model(model, meta[KEY_MODEL])
    if meta.get(KEY_PLAN) is not None:
        record_plan(model, meta[KEY_PLAN])
    return model.eval(), meta
