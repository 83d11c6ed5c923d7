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

import yaml

from secateur.errors import ConfigError
from secateur.search.config import PruneConfig
from secateur.train import TrainConfig

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
    raise ConfigError(f"{where}: {key} must be a name (or a record with a name), got {entry!r}")


def _flatten(data: Mapping[str, Any], where: str) -> tuple[dict[str, Any], object, object]:
    """(options, model, dataset) of a flat recipe or of a run's config.yaml."""
    if isinstance(data.get("prune"), Mapping):
        extra = sorted(set(data) - set(RUN_FOLDER_KEYS) - set(RUN_KEYS))
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} beside 'prune'")
        options = {**dict(data.get("train") or {}), **dict(data["prune"])}
        return options, data.get("model"), data.get("dataset")
    options = {key: value for key, value in data.items() if key not in RUN_KEYS}
    return options, data.get("model"), data.get("dataset")


def parse_recipe(data: object, where: str = "the recipe") -> Recipe:
    """Split and check a recipe's mapping; the prune options are validated here, once."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a recipe is a mapping of option names to values, got {type(data).__name__}")
    options, model, dataset = _flatten({str(k).replace("-", "_"): v for k, v in data.items()}, where)
    prune_names, train_names = _names(PruneConfig), _names(TrainConfig)
    unknown = sorted(set(options) - prune_names - train_names)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; see 'secateur prune --help'")
    prune = {k: v for k, v in options.items() if k in prune_names}
    train = {k: v for k, v in options.items() if k in train_names}
    try:
        PruneConfig.from_dict(prune, where=where)
    except TypeError as error:
        raise ConfigError(f"{where}: a value has the wrong type ({error})") from None
    return Recipe(prune, train, _name_of(model, "model", where), _name_of(dataset, "dataset", where))


def read_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read recipe {path} ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}; fix the file") from None
    return parse_recipe(data if data is not None else {}, where=str(path))
