"""What every report is made of: the block types, cell formatting, and reads of results entries.

A report is a list of small blocks (heading, key-value list, table, paragraph, figure) that
the markdown and HTML renderers (:mod:`secateur.report.render`) both draw, so both always show
the same numbers. The formatters turn a number into the cell text both renderers print; each
gives a dash for a missing value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DASH = "—"

# ----------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Heading:
    """A section title (level 1 or 2)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Meta:
    """A list of ``(key, value)`` facts, shown as a bullet list / definition list."""

    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Table:
    """A table of preformatted cells; ``align`` holds "l" or "r" per column."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: tuple[str, ...]


@dataclass(frozen=True)
class Para:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class Image:
    """A figure: a PNG file written beside the report."""

    caption: str
    filename: str


Block = Heading | Meta | Table | Para | Image

# ----------------------------------------------------------------------------- formatting


def fmt_pct(fraction: float | None) -> str:
    """A fraction in [0, 1] as a percentage with 2 decimals."""
    return DASH if fraction is None else f"{100 * fraction:.2f}%"


def fmt_pts(points: float | None) -> str:
    """An accuracy difference in percentage points, 2 decimals."""
    return DASH if points is None else f"{points:.2f} pts"


def fmt_count(n: float | None) -> str:
    """An integer count with thousands separators."""
    return DASH if n is None else f"{round(n):,}"


def fmt_times(c: float | None) -> str:
    """A compression ratio: 1 decimal and an 'x'."""
    return DASH if c is None else f"{c:.1f}x"


def fmt_bytes(n: float | None) -> str:
    """A byte count, exact and in MiB."""
    return DASH if n is None else f"{int(n):,} ({n / 2**20:.2f} MiB)"


def fmt_ms(seconds: float | None) -> str:
    """A latency in milliseconds."""
    return DASH if seconds is None else f"{1000 * seconds:.3f} ms"


def fmt_duration(seconds: float | None) -> str:
    """A wall time in the largest sensible unit."""
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def fmt_ratio(after: float | None, before: float | None) -> str:
    """Relative change after/before as a signed percentage."""
    if after is None or not before:
        return DASH
    change = 100 * (after / before - 1)
    return "unchanged" if abs(change) < 0.005 else f"{change:+.2f}%"


def share(part: float | None, whole: float | None) -> float | None:
    """part / whole, or None when it is undefined."""
    return None if part is None or not whole else part / whole


# ----------------------------------------------------------------------------- results entries


def layer_kept(layer: Mapping[str, Any]) -> float | None:
    """Fraction of a layer's weights kept: ``kept``, else nonzero / weights."""
    if layer.get("kept") is not None:
        return layer["kept"]
    return share(layer.get("nonzero"), layer.get("weights"))


def accuracy(block: Mapping[str, Any] | None, split: str) -> float | None:
    """Accuracy of ``split`` from ``{"val": {"accuracy": a}}`` (or ``{"val": a}``)."""
    value = (block or {}).get(split)
    return value.get("accuracy") if isinstance(value, Mapping) else value


def model_name(model: Any) -> str:
    """``name (k=v, ...)`` from results' ``model`` entry."""
    if not isinstance(model, Mapping):
        return DASH if model is None else str(model)
    args = model.get("args") or {}
    inner = ", ".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, Mapping) else str(args)
    return f"{model.get('name', DASH)}" + (f" ({inner})" if inner else "")
