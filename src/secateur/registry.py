"""Name -> object registries shared by the Python API and the CLI.

Every user-facing choice (datasets, models, criteria, schedules, ...) is a string resolved
through a :class:`Registry`, so ``secateur prune --method han`` and
``secateur.prune(..., method="han")`` accept exactly the same names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from secateur.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from lower-case names to objects, with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

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

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise :class:`UnknownNameError`."""
        key = name.lower()
        if key not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._items[key]

    def describe(self, name: str) -> str:
        """One-line description of ``name`` (from its docstring unless given)."""
        self.get(name)
        return self._help.get(name.lower(), "")

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
