"""Recipe files: ``secateur prune --config recipe.yaml``.

A recipe is a YAML mapping whose keys are the names the CLI flags and the Python keyword
arguments share (``max_drop`` or ``max-drop``, ``granularity``, ``lr``, ``epochs``, ...): the
options of :class:`~secateur.search.config.PruneConfig`, of
:class:`~secateur.train.TrainConfig` (used when a baseline is trained), and ``model`` /
``dataset``. A run's own ``config.yaml`` is a valid recipe too (its ``prune:`` section holds
the options, ``model`` is the record it was built from). Flags given on the command line
override the file. Unknown keys and wrong types are one-line errors naming the file and key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secateur.errors import ConfigError
from secateur.io.schemas import RECIPE_HINT, read_yaml
from secateur.search.config import PRUNE_OPTIONS, PruneConfig
from secateur.train import TRAIN_OPTIONS, TrainConfig

RUN_KEYS = ("model", "dataset")
RUN_FOLDER_KEYS = ("prune", "train", "baseline_val")  # the layout of a run's config.yaml


@dataclass(frozen=True)
class Recipe:
    """A recipe split by where its options go."""

    prune: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    dataset: str | None = None


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _name_of(entry: object, key: str, where: str) -> str | None:
    """A model / dataset name from a string or a record ``{"name": ...}``."""
    if entry is None or isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        return entry["name"]
    raise ConfigError(f"{where}: {key}: expected a name or a record with a name, got {entry!r}; {RECIPE_HINT}")


def _run_layout(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The options of a run's config.yaml used as a recipe: its ``prune`` and ``train`` sections, checked."""
    extra = sorted(set(data) - set(RUN_FOLDER_KEYS) - set(RUN_KEYS))
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} beside 'prune'; {RECIPE_HINT}")
    PRUNE_OPTIONS.parse(data["prune"], where, at="prune", hint=RECIPE_HINT)
    TRAIN_OPTIONS.parse(data.get("train") or {}, where, at="train", hint=RECIPE_HINT)
    return {**dict(data.get("train") or {}), **dict(data["prune"])}


def _flat(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The options of a flat recipe: every key an option of PruneConfig or TrainConfig, typed."""
    options = {key: value for key, value in data.items() if key not in RUN_KEYS}
    unknown = sorted(set(options) - _names(PruneConfig) - _names(TrainConfig))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; see 'secateur prune --help'")
    PRUNE_OPTIONS.parse(_only(options, PruneConfig), where, hint=RECIPE_HINT)
    TRAIN_OPTIONS.parse(_only(options, TrainConfig), where, hint=RECIPE_HINT)
    return options


def _only(options: Mapping[str, Any], cls: type) -> dict[str, Any]:
    names = _names(cls)
    return {key: value for key, value in options.items() if key in names}


def parse_recipe(data: object, where: str = "the recipe") -> Recipe:
    """Split and check a recipe's mapping: keys and types strictly (a string is not a number),
    and the prune options' values (:meth:`PruneConfig.from_dict`), once, here."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a recipe is a mapping of option names to values, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    options = _run_layout(data, where) if isinstance(data.get("prune"), Mapping) else _flat(data, where)
    prune, train = _only(options, PruneConfig), _only(options, TrainConfig)
    PruneConfig.from_dict(prune, where=where)
    return Recipe(prune, train, _name_of(data.get("model"), "model", where), _name_of(data.get("dataset"), "dataset",
                                                                                    where))


def read_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file."""
    path = Path(path)
    data = read_yaml(path, hint=RECIPE_HINT, error=ConfigError)
    return parse_recipe(data if data is not None else {}, where=str(path))
