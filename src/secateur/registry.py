"""Name -> object registries shared by the Python API, the recipe file and the CLI.

Every user-facing choice (datasets, models, methods, granularities, schedules, ...) is a
string resolved through a :class:`Registry`, so ``secateur prune --method han``,
``method: han`` in a recipe and ``secateur.prune(..., method="han")`` accept exactly the same
names. Registries are filled one way: ``@REGISTRY.register(name)`` beside the object (or
``REGISTRY.add`` for objects built by a helper). A registry can also resolve a *family* of
names by pattern (``2:4`` for the ``n:m`` granularity), and can name the modules that hold
its built-in entries, imported on first use, so that a registry defined in a low layer is
filled by higher layers without the low layer importing them.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from secateur.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from lower-case names to objects, with helpful errors for unknown names."""

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.builtins = builtins  # modules whose import registers the built-in entries
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._examples: dict[str, str] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], T]]] = []
        self._loaded = not builtins

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` (names are unique)."""

        def decorate(obj: T) -> T:
            self.add(name, obj, help)
            return obj

        return decorate

    def add(self, name: str, obj: T, help: str = "") -> None:
        """Register ``obj`` under ``name``; re-registering a name is a programming error."""
        key = name.lower()
        if key in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[key] = obj
        doc = (getattr(obj, "__doc__", None) or "").strip()
        self._help[key] = help or (doc.splitlines()[0] if doc else "")

    def add_pattern(self, display: str, pattern: str, build: Callable[[re.Match[str]], T], *,
                    example: str, help: str = "") -> None:
        """Resolve every name matching ``pattern`` (a regex, case-insensitive) to ``build(match)``.

        The family is listed as ``display`` (e.g. ``n:m``), which itself resolves to ``example``.
        The match is on the name as given, so a family may carry a case-sensitive part (a path).
        """
        compiled = re.compile(pattern, re.IGNORECASE)
        if not compiled.fullmatch(example):
            raise ValueError(f"example {example!r} does not match {pattern!r}")
        self._patterns.append((display, compiled, build))
        self._examples[display] = example
        self._help[display] = help

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise :class:`UnknownNameError`."""
        self._load()
        key = name.lower() if isinstance(name, str) else name
        key = self._examples.get(key, key)
        if key in self._items:
            return self._items[key]
        given = name.strip() if isinstance(name, str) and name.lower() == key else key  # display -> example
        for _display, pattern, build in self._patterns:
            if isinstance(given, str) and (match := pattern.fullmatch(given)):
                return build(match)
        raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")

    def describe(self, name: str) -> str:
        """One-line description of ``name`` (from its docstring unless given)."""
        self._load()
        if name.lower() not in self._help:
            self.get(name)
        return self._help.get(name.lower(), "")

    def names(self) -> list[str]:
        """All registered names, sorted, then the pattern families (e.g. ``n:m``)."""
        self._load()
        return sorted(self._items) + [display for display, _, _ in self._patterns]

    def _load(self) -> None:
        """Import the modules that register the built-in entries (once)."""
        if not self._loaded:
            self._loaded = True
            for module in self.builtins:
                importlib.import_module(module)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except ConfigError:  # unknown, or a family member that cannot be built (e.g. "5:3")
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items) + len(self._patterns)


class Subset(Registry[T]):
    """A read-only view of another registry's entries for which ``keep(entry)`` holds.

    A granularity that takes only some of a registry's methods names this view as its methods
    (e.g. the kernel and N:M granularities take the weight methods without a training phase),
    so its choices, errors and ``secateur list`` say what it takes. Entries registered in the
    source later are seen too.
    """

    def __init__(self, source: Registry[T], keep: Callable[[T], bool], kind: str | None = None) -> None:
        super().__init__(kind or source.kind)
        self._source, self._keep = source, keep

    def add(self, name: str, obj: T, help: str = "") -> None:
        """Entries are registered in the source registry."""
        raise ValueError(f"register {name!r} in the source {self._source.kind} registry, not in a view of it")

    def _load(self) -> None:
        self._source._load()
        self._items = {key: obj for key, obj in self._source._items.items() if self._keep(obj)}
        self._help = {key: self._source._help.get(key, "") for key in self._items}
