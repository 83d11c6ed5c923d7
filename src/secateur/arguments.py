"""Checks of what a caller passes to the public API (``secateur.prune``, ``fit``, ``evaluate``).

Each check raises a one-line :class:`~secateur.errors.ConfigError` naming the argument, what
it got and what it takes, before any work starts, rather than a ``TypeError`` from deep inside
a round. :func:`check_field_types` checks keyword options against a dataclass's annotations
(``max_drop="0.1"``, ``rounds=2.5``), since ``dataclasses.replace`` does not.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from secateur.errors import ConfigError


def shown(value: object, limit: int = 40) -> str:
    """``value`` as an error message shows it: its type and a short repr."""
    text = repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


def expect_callable(value: object, name: str, takes: str = "the model") -> None:
    """``value`` is None or callable."""
    if value is not None and not callable(value):
        raise ConfigError(f"{name}= must be a function taking {takes} (or None), got {shown(value)}")


def expect_module(value: object, name: str = "model") -> None:
    """``value`` is a torch ``nn.Module``."""
    if not isinstance(value, nn.Module):
        raise ConfigError(f"{name} must be a torch.nn.Module, got {shown(value)}")


def expect_instance(value: object, kinds: type | tuple[type, ...], name: str, what: str) -> None:
    """``value`` is None or one of ``kinds`` (``what`` describes them in the message)."""
    if value is not None and not isinstance(value, kinds):
        raise ConfigError(f"{name}= must be {what} (or None), got {shown(value)}")


def expect_path(value: object, name: str = "out", what: str = "a folder path") -> Path | None:
    """``value`` as a Path (None stays None); a str or os.PathLike (``what`` names it in the error)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    raise ConfigError(f"{name}= must be {what} (str or pathlib.Path), got {shown(value)}")


def expect_shape(value: object, name: str = "input_shape") -> tuple[int, ...] | None:
    """``value`` as a tuple of positive ints, e.g. ``(1, 28, 28)`` (None stays None)."""
    if value is None:
        return None
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if not items or not all(_integer(v) and int(v) > 0 for v in items):
        raise ConfigError(f"{name}= must be a tuple of positive ints such as (1, 28, 28), got {shown(value)}")
    return tuple(int(v) for v in items)


def expect_mapping(value: object, name: str) -> None:
    """``value`` is None or a mapping (a dict)."""
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{name}= must be a mapping (a dict), got {shown(value)}")


def _integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fits(value: object, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` (the annotations PruneConfig / TrainConfig use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in args)
    if hint is type(None):
        return value is None
    simple = {float: _real, int: _integer, bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}
    if hint in simple:
        return simple[hint](value)
    if origin is tuple:  # tuple[str, ...]: any list or tuple of those
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if origin is Mapping:
        return isinstance(value, Mapping) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    return hint is Any or isinstance(value, origin or hint)


def _wanted(hint: Any) -> str:
    """What a type hint asks for, in words."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_wanted(arm) for arm in typing.get_args(hint))
    words = {float: "a number", int: "an integer", bool: "True or False", str: "a string", type(None): "None"}
    if hint in words:
        return words[hint]
    return {tuple: "a list of names", Mapping: "a mapping of name to number"}.get(typing.get_origin(hint), str(hint))


def check_field_types(cls: type, values: Mapping[str, object], what: str = "option") -> None:
    """Raise ConfigError (one line) for the first value whose type does not fit ``cls``'s field of that name."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in values and not _fits(values[field.name], hints[field.name]):
            raise ConfigError(f"{what} {field.name} must be {_wanted(hints[field.name])}, "
                              f"got {shown(values[field.name])}")
