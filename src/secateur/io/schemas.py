"""Schemas of the files secateur reads, and the one place a pydantic error becomes one line.

Every reader (``secateur.io.rundir``, ``secateur.io.storage``, ``secateur.app.recipe``) checks
what it loaded against a schema here before anything uses it, so a damaged or hand-edited
file is a one-line error naming the file and the key
(``runs/x/config.yaml: prune.max_drop: expected a number, got 'abc'; fix the file or start a new
run``), never a ``KeyError`` or ``TypeError`` deep inside a run. Checks are strict: a string is
not a number, a number is not true or false.

The options (:class:`~secateur.search.config.PruneConfig`, :class:`~secateur.train.TrainConfig`,
the search state) are defined once, as dataclasses; :class:`OptionsSchema` derives their
schemas from the dataclass fields (names, types, defaults), with every whole number bounded to
64 bits and every real number to float32's finite range, and unknown keys refused. The file
schemas below type the keys secateur writes and reads and keep any other key (a user's own
``meta``); the option sections inside them (``prune``, ``train``, ``search``) are checked by the
options' schemas, so the two never disagree. This module imports nothing else of secateur but
its errors, so the option modules can derive their schemas here without an import cycle.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import operator
import re
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import ErrorDetails

from secateur.errors import CheckpointError, ConfigError, SecateurError

if TYPE_CHECKING:  # the protocol every dataclass satisfies exists in typeshed only
    from _typeshed import DataclassInstance

INT64_MAX = 2**63 - 1  # whole numbers go to torch (seeds, counts) as int64
FLOAT32_MAX = 3.4028234663852886e38  # real numbers go to torch (learning rates) as float32
MAX_EPOCHS = 100_000  # epochs of one training run (baseline, retraining, polish)
MAX_STRENGTH = 64.0  # a pruning strength is about log2 of the compression: 2**64 prunes any model whole

RUN_HINT = "fix the file or start a new run"
CHECKPOINT_HINT = "restore the file or re-save the model"
RECIPE_HINT = "fix the recipe"

D = TypeVar("D", bound="DataclassInstance")
M = TypeVar("M", bound=BaseModel)

OPTIONS = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)  # a file's settings, typed by a person
WRITTEN = ConfigDict(strict=True, extra="allow")  # a file secateur writes: its keys typed, other keys kept


# ----------------------------------------------------------------------------- one-line errors

_PHRASES = {
    "missing": "required key missing", "extra_forbidden": "unknown key", "float_type": "expected a number",
    "int_type": "expected a whole number", "string_type": "expected a string",
    "bool_type": "expected true or false", "dict_type": "expected a mapping", "model_type": "expected a mapping",
    "list_type": "expected a list", "tuple_type": "expected a list", "finite_number": "expected a finite number",
    "none_required": "expected null",
}


def _shown(value: object) -> str:
    """A value as an error message shows it: short, in the file's own terms."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _key(detail: ErrorDetails, data: object) -> str:
    """The dotted key of an error in ``data``; union branch names (``str``, ``Named``) are dropped."""
    parts, current, loc = [], data, detail["loc"]
    for index, part in enumerate(loc):
        if _has(current, part):
            current = current[part]  # type: ignore[index]  # _has checked it
        elif not (detail["type"] == "missing" and index == len(loc) - 1):
            continue
        parts.append(str(part))
    return ".".join(parts)


def _has(data: object, part: int | str) -> bool:
    """Whether ``data[part]`` exists (a key of a mapping, an index of a list)."""
    if isinstance(data, Mapping):
        return part in data
    return isinstance(data, (list, tuple)) and isinstance(part, int) and 0 <= part < len(data)


_BOUNDS = {"less_than_equal": ("<=", "le"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "greater_than": (">", "gt")}


def _phrase(detail: ErrorDetails) -> str:
    """What the value should have been, in words (``expected a number``)."""
    if detail["type"] in _PHRASES:
        return _PHRASES[detail["type"]]
    if detail["type"] in _BOUNDS:
        op, name = _BOUNDS[detail["type"]]
        limit = detail.get("ctx", {}).get(name)
        return f"expected {'a whole number' if isinstance(limit, int) else 'a number'} {op} {limit}"
    return detail["msg"].replace("Input should be", "expected").replace("String should", "expected a string to")


def describe(error: ValidationError, data: object, at: str = "") -> str:
    """The deepest problem of a validation error as ``key: expected ..., got ...`` (one line); the
    wishes of a union's branches at that key are joined (``expected a string or a mapping``)."""
    details = [(_key(d, data), d) for d in error.errors(include_url=False)]
    key, first = max(details, key=lambda pair: pair[0].count(".") + bool(pair[0]))
    wishes = list(dict.fromkeys(_phrase(d) for k, d in details if k == key))
    wanted = " or ".join([wishes[0], *(wish.removeprefix("expected ") for wish in wishes[1:])])
    shown = "" if first["type"] in ("missing", "extra_forbidden") else f", got {_shown(first['input'])}"
    others = {k for k, _ in details if k != key and not key.startswith(f"{k}.") and k}
    more = f" (and {len(others)} more)" if others else ""
    full = ".".join(part for part in (at, key) if part)
    return f"{full}: {wanted}{shown}{more}" if full else f"{wanted}{shown}{more}"


def check(schema: type[M], data: object, where: str | Path, *, hint: str | None,
          error: type[SecateurError] = CheckpointError, at: str = "") -> M:
    """``data`` validated by ``schema``; otherwise ``error`` with one line naming ``where`` and the key."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        prefix = f"{where}: " if str(where) else ""
        suffix = f"; {hint}" if hint else ""
        raise error(f"{prefix}{describe(exc, data, at)}{suffix}") from None


# ----------------------------------------------------------------------------- options, derived from dataclasses


def _bounded(hint: Any) -> Any:
    """``hint`` with every ``int`` bounded to 64 bits and every ``float`` to float32's range."""
    if hint is int:
        return Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
    if hint is float:
        return Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
    args = typing.get_args(hint)
    if not args:
        return hint
    mapped = tuple(arg if arg is Ellipsis else _bounded(arg) for arg in args)
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is type(int | None):
        return functools.reduce(operator.or_, mapped)
    return origin[mapped]


def _has_tuple(hint: Any) -> bool:
    return any(typing.get_origin(arg) is tuple for arg in (hint, *typing.get_args(hint)))


class OptionsSchema(Generic[D]):
    """The strict schema of an options dataclass, derived from its fields (written once, there).

    ``required`` names fields a file must give although the dataclass has a default; ``renamed``
    maps old key names to today's (applied when only the old one is given); ``bounded`` adds the
    64-bit / float32 limits and refuses nan and infinities (off for state secateur computed).
    """

    def __init__(self, cls: type[D], *, required: Collection[str] = (), renamed: Mapping[str, str] | None = None,
                 bounded: bool = True) -> None:
        hints = typing.get_type_hints(cls)
        fields: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            hint = _bounded(hints[spec.name]) if bounded else hints[spec.name]
            fields[spec.name] = (hint, ... if spec.name in required else _default(spec))
        config = OPTIONS if bounded else ConfigDict(strict=True, extra="forbid")
        self.cls, self.renamed = cls, dict(renamed or {})
        self.model: type[BaseModel] = create_model(f"{cls.__name__}Schema", __config__=config, **fields)
        self.sequences = frozenset(name for name, hint in hints.items() if _has_tuple(hint))

    def upgraded(self, data: object) -> object:
        """``data`` with old key names renamed and lists given for tuple fields made tuples."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for old, new in self.renamed.items():
            if old in data and new not in data:
                data[new] = data.pop(old)
        return {k: tuple(v) if k in self.sequences and isinstance(v, list) else v for k, v in data.items()}

    def parse(self, data: object, where: str | Path = "", *, hint: str | None,
              error: type[SecateurError] = ConfigError, at: str = "") -> D:
        """An instance of the dataclass from plain data, every key and type checked (and the 64-bit /
        float32 limits; the options' own ranges are their ``validate``'s)."""
        checked = check(self.model, self.upgraded(data), where, hint=hint, error=error, at=at)
        return self.cls(**{name: getattr(checked, name) for name in type(checked).model_fields})

    def check_values(self, options: D) -> None:
        """ConfigError (one line) unless every field of ``options`` has its type (the Python API,
        where numpy / torch scalars count as the numbers they hold)."""
        values = {spec.name: _plain(getattr(options, spec.name)) for spec in dataclasses.fields(options)}
        self.parse(values, hint=None)


def _plain(value: object) -> object:
    """A numpy / torch scalar as the Python number it holds; anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or isinstance(value, (int, float)):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _default(spec: dataclasses.Field) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return Field(default_factory=spec.default_factory)
    return spec.default


# ----------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads ``1e-3`` as a number (YAML 1.2; 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(path: Path, *, hint: str, error: type[SecateurError] = CheckpointError) -> object:
    """The data of a YAML file (None if empty); a missing or unparsable file is one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise error(f"cannot read {path} ({reason}); {hint}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path} is not valid YAML{line}; {hint}") from None


# ----------------------------------------------------------------------------- records inside the files


class ModelArgs(BaseModel):
    """The factory arguments of a model record; the zoo's common ones are typed."""

    model_config = WRITTEN
    input_shape: list[int] | None = None
    num_classes: int | None = None


class ModelRecord(BaseModel):
    """``{"name": ..., "args": {...}}``: the factory call that rebuilds a model."""

    model_config = WRITTEN
    name: str
    args: ModelArgs = Field(default_factory=ModelArgs)


class Named(BaseModel):
    """A record with a name (a dataset: ``{"name": "mnist", "val_size": 5000}``)."""

    model_config = WRITTEN
    name: str


class Score(BaseModel):
    """One split's metrics: ``{"accuracy": 0.98}``."""

    model_config = WRITTEN
    accuracy: float | None = None


Scores = dict[str, Score | float | None]  # {"val": {"accuracy": a}, "test": ...} (or, older, {"val": a})


# ----------------------------------------------------------------------------- the files


class ConfigFile(BaseModel):
    """``config.yaml``: the run's options (``prune``, checked by PruneConfig's schema) and what it pruned."""

    model_config = WRITTEN
    prune: dict[str, Any]
    baseline_val: float
    model: ModelRecord | None = None
    dataset: str | Named | None = None
    train: dict[str, Any] | None = None


class StateFile(BaseModel):
    """``state.json``: the last completed round's checkpoint (``state/round-N``) and the search state."""

    model_config = ConfigDict(strict=True, extra="forbid")
    checkpoint: str = Field(pattern=r"^round-[0-9]+$")
    search: dict[str, Any]


class LayerCount(BaseModel):
    """A history row's per-layer counts."""

    model_config = WRITTEN
    total: int | None = None
    nonzero: int | None = None


class HistoryRow(BaseModel):
    """One line of ``history.jsonl`` (docs/RUNDIR.md): the keys the search and the report read."""

    model_config = WRITTEN
    round: int
    strength: float
    val_accuracy: float
    drop: float
    feasible: bool
    params_nonzero: int
    compression: float
    seconds: float
    margin: float | None = None
    recovery_passes: int | None = None
    macs_nonzero: int | None = None
    level: dict[str, float] | float | None = None
    layers: dict[str, LayerCount] | None = None


class CheckpointHeader(BaseModel):
    """A checkpoint's JSON (``model.json``); ``train`` is checked by TrainConfig's schema."""

    model_config = WRITTEN
    format: str
    format_version: int
    masks: list[str]
    tensors: int = Field(ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    model: ModelRecord | None = None
    plan: dict[str, Any] | None = None
    metrics: Scores | None = None
    dataset: str | Named | None = None
    train: dict[str, Any] | None = None


class CompactPattern(BaseModel):
    """A compact file's sparsity pattern of one tensor: its encoding, parameters and sections."""

    model_config = WRITTEN
    encoding: str
    kept: int = Field(ge=0)
    sections: dict[str, int]
    crc32: int


class CompactValues(BaseModel):
    """A compact file's values of one tensor: raw or codebook, how many, and where."""

    model_config = WRITTEN
    kind: str
    count: int = Field(ge=0)
    sections: dict[str, int]


class CompactTensor(BaseModel):
    """One tensor of a compact file."""

    model_config = WRITTEN
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    dtype: str
    stored: str
    crc32: int
    mask: CompactPattern | None
    values: CompactValues


class CompactMeta(BaseModel):
    """What rebuilds a compact file's model (the checkpoint header's model record and plan)."""

    model_config = WRITTEN
    model: ModelRecord | None = None
    plan: dict[str, Any] | None = None


class CompactHeader(BaseModel):
    """The header of a compact export (``secateur.export.compact``)."""

    model_config = WRITTEN
    format: str
    format_version: int
    packed: bool
    values: str
    meta: CompactMeta
    tensors: list[CompactTensor]
    sections: list[Annotated[list[Any], Field(min_length=3, max_length=3)]]
    payload_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class LayerRow(BaseModel):
    """One entry of ``results.json``'s ``layers``."""

    model_config = WRITTEN
    name: str | None = None
    kind: str | None = None
    shape: list[int] | None = None
    weights: int | None = None
    nonzero: int | None = None
    kept: float | None = None
    macs: int | None = None
    macs_nonzero: int | None = None


class Counts(BaseModel):
    """``params`` / ``macs`` / ``bytes`` of ``results.json``: counts by name."""

    model_config = WRITTEN
    baseline: int | None = None
    total: int | None = None
    dense: int | None = None
    nonzero: int | None = None
    pruned: int | None = None
    compact: int | None = None
    sparse_csr: int | None = None  # older runs: an estimate, replaced by the real ``compact`` file's bytes


class Acceptance(BaseModel):
    """``results.json``'s ``acceptance``: the rule the rounds were judged by."""

    model_config = WRITTEN
    confidence: float | None = None
    paired: bool | None = None
    margin: float | None = None


class Polish(BaseModel):
    """``results.json``'s ``polish``: the final retraining, if any."""

    model_config = WRITTEN
    epochs: int | None = None
    kept: bool | None = None
    val_accuracy_before: float | None = None
    val_accuracy_after: float | None = None
    drop: float | None = None
    margin: float | None = None


class CertifiedCandidate(BaseModel):
    """One try of ``results.json``'s ``certification``: a candidate's paired bound on the held-out images."""

    model_config = WRITTEN
    round: int
    polished: bool
    compression: float
    drop: float
    ucb: float
    se: float
    only_reference: int
    only_candidate: int
    certified: bool


class Certification(BaseModel):
    """``results.json``'s ``certification`` (secateur.search.certify): null when not certified."""

    model_config = WRITTEN
    level: float
    tries: int
    z: float
    bound: str
    images: int
    search_images: int | None = None
    reference: str
    candidates: list[CertifiedCandidate]
    certified: bool
    chosen_round: int | None = None
    drop: float | None = None
    ucb: float | None = None
    message: str


class Control(BaseModel):
    """The dense control of ``results.json``'s ``reference``: the baseline given the polish's training."""

    model_config = WRITTEN
    epochs: int | None = None
    val: Score
    test: Score


class Reference(BaseModel):
    """``results.json``'s ``reference``: what every drop is measured against (secateur.search.reference)."""

    model_config = WRITTEN
    used: str
    control: Control | None = None
    note: str
    drop_vs_baseline: dict[str, float | None]


class Channels(BaseModel):
    """``results.json``'s ``channels``: one layer's output channels before and after."""

    model_config = WRITTEN
    before: int | None = None
    after: int | None = None


class UnfollowedOp(BaseModel):
    """``results.json``'s ``unfollowed``: an op the structured analysis does not follow, and what it kept."""

    model_config = WRITTEN
    op: str
    path: str
    channels: int


class ResultsFile(BaseModel):
    """``results.json`` (docs/RUNDIR.md): every key the report and the CLI read, typed."""

    model_config = WRITTEN
    baseline: Scores
    pruned: Scores
    params: Counts
    compression: float
    layers: list[LayerRow]
    method: str | None = None
    granularity: str | None = None
    schedule: str | None = None
    max_drop: float | None = None
    model: ModelRecord | str | None = None
    dataset: str | Named | None = None
    drop: dict[str, float | None] | None = None
    acceptance: Acceptance | None = None
    polish: Polish | None = None
    reference: Reference | None = None
    certification: Certification | None = None
    macs: Counts | None = None
    bytes: Counts | None = None
    latency: dict[str, float | None] | None = None
    channels: dict[str, Channels] | None = None
    unfollowed: list[UnfollowedOp] | None = None
    seconds: float | None = None
    rounds: int | None = None
    chosen_round: int | None = None
    saturated: bool | None = None
    learned: dict[str, Any] | None = None


class SensitivityPoint(BaseModel):
    """One point of a layer's sensitivity curve."""

    model_config = WRITTEN
    level: float
    strength: float | None = None
    kept: float | None = None
    val_accuracy: float | None = None


class SensitivityFile(BaseModel):
    """``sensitivity.json``: per-layer curves and the factors chosen from them."""

    model_config = WRITTEN
    method: str | None = None
    baseline_val: float | None = None
    tolerance: float | None = None
    layers: dict[str, list[SensitivityPoint]] = Field(default_factory=dict)
    factors: dict[str, float] | None = None
    chosen: dict[str, float] | None = None
