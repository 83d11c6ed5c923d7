"""Progress reporting for long work (training epochs, pruning rounds, downloads), on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[..., None]


def _noop(*args: object, **kwargs: object) -> None:
    return None


@contextmanager
def progress_bar(enabled: bool, total: int | None, description: str = "") -> Iterator[Advance]:
    """Yield ``advance(steps=1, description=None, status=None)`` driving a rich bar on stderr.

    Disabled, ``advance`` does nothing: library calls are silent unless asked, the CLI asks.
    """
    if not enabled:
        yield _noop
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(steps: int = 1, description: str | None = None, status: str | None = None) -> None:
            fields: dict[str, Any] = {"status": status} if status is not None else {}
            if description is not None:
                fields["description"] = description
            bar.update(task, advance=steps, **fields)

        yield advance
