"""The report of a sweep (``secateur sweep``): ``sweep.md``, ``sweep.html`` and ``sweep.png``.

One trade-off plot with a line per method, the most compressed point within the bound per
method when the sweep had a bound, and a table of every point per method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secateur.errors import CheckpointError
from secateur.io import rundir
from secateur.io.storage import read_json
from secateur.report.blocks import (
    DASH,
    Block,
    Heading,
    Image,
    Meta,
    Para,
    Table,
    accuracy,
    fmt_count,
    fmt_pct,
    fmt_pts,
    fmt_times,
    model_name,
)
from secateur.report.figures import png_bytes, tradeoff_figure
from secateur.report.render import write_report

SWEEP_NOTE = ("Every point was measured on the validation split; a sweep chooses no model, so it maps "
              "the trade-off of each method rather than giving a test result to quote.")
TEST_NOTE = (" Test accuracy (sweep --test) was measured at every point and reported only: nothing was chosen "
             "by it.")


def _sweep_feasible(point: Mapping[str, Any], max_drop: float | None) -> str:
    """'yes' / 'no' against the bound, or a dash without one."""
    if max_drop is None or point.get("drop") is None:
        return DASH
    return "yes" if point["drop"] <= max_drop else "no"


def _level(level: Any) -> str:
    """A scalar level, or 'per layer' for a per-layer mapping."""
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        return f"{level:.3g}"
    return "per layer" if isinstance(level, Mapping) else DASH


def _sweep_table(points: Sequence[Mapping[str, Any]], max_drop: float | None) -> Table:
    """One method's sweep points, by increasing compression (test / bound columns only when known)."""
    pts = sorted(points, key=lambda p: p.get("compression") or 0)
    columns: list[tuple[str, Any]] = [
        ("strength", lambda p: DASH if p.get("strength") is None else f"{p['strength']:.3g}"),
        ("level", lambda p: _level(p.get("level"))), ("val accuracy", lambda p: fmt_pct(p.get("val_accuracy")))]
    if any(p.get("test_accuracy") is not None for p in pts):
        columns.append(("test accuracy", lambda p: fmt_pct(p.get("test_accuracy"))))
    columns += [("drop", lambda p: fmt_pts(p.get("drop"))), ("compression", lambda p: fmt_times(p.get("compression"))),
                ("size saved", lambda p: fmt_pct(1 - 1 / p["compression"] if p.get("compression") else None)),
                ("nonzero params", lambda p: fmt_count(p.get("params_nonzero")))]
    if max_drop is not None:
        columns.append(("within bound", lambda p: _sweep_feasible(p, max_drop)))
    rows = tuple(tuple(fmt(p) for _, fmt in columns) for p in pts)
    align = tuple("l" if name == "within bound" else "r" for name, _ in columns)
    return Table(tuple(name for name, _ in columns), rows, align)


def _sweep_best(methods: Mapping[str, Sequence[Mapping[str, Any]]], max_drop: float) -> Table:
    """Per method, the most compressed point within the bound."""
    rows = []
    for name, pts in methods.items():
        ok = [p for p in pts if p.get("drop") is not None and p["drop"] <= max_drop and p.get("compression")]
        best: Mapping[str, Any] = max(ok, key=lambda p: p["compression"], default={})  # {}: no point in bound
        rows.append((name, fmt_times(best.get("compression")), fmt_pts(best.get("drop")),
                     fmt_pct(best.get("val_accuracy")), fmt_count(best.get("params_nonzero"))))
    return Table(("method", "best compression", "drop", "val accuracy", "nonzero params"), tuple(rows),
                 ("l", "r", "r", "r", "r"))


def _sweep_header(sweep: Mapping[str, Any]) -> Meta:
    """Model, dataset, baseline accuracy, methods, schedule, bound."""
    base, max_drop = sweep.get("baseline") or {}, sweep.get("max_drop")
    baseline = f"{fmt_pct(accuracy(base, 'val'))} / {fmt_pct(accuracy(base, 'test'))}"
    return Meta((("model", model_name(sweep.get("model"))), ("dataset", str(sweep.get("dataset", DASH))),
                 ("baseline accuracy (val / test)", baseline),
                 ("methods", ", ".join(sweep.get("methods") or {}) or DASH),
                 ("schedule", str(sweep.get("schedule", DASH))),
                 ("max drop", DASH if max_drop is None else fmt_pts(max_drop))))


def _sweep_blocks(sweep: Mapping[str, Any], png_name: str) -> list[Block]:
    """The sweep report as blocks."""
    methods, max_drop = sweep.get("methods") or {}, sweep.get("max_drop")
    title = f"secateur sweep: {model_name(sweep.get('model')).split(' (')[0]} on {sweep.get('dataset', DASH)}"
    blocks: list[Block] = [Heading(title, 1), _sweep_header(sweep)]
    if max_drop is not None:
        blocks += [Heading("Best within the bound"), _sweep_best(methods, max_drop)]
    blocks += [Heading("Trade-off"), Image("Validation accuracy drop vs compression, one line per method", png_name)]
    for name, pts in methods.items():
        blocks += [Heading(f"Method: {name}"), _sweep_table(pts, max_drop)]
    tested = any(p.get("test_accuracy") is not None for pts in methods.values() for p in pts)
    return [*blocks, Heading("Note on evaluation"), Para(SWEEP_NOTE + (TEST_NOTE if tested else ""))]


def sweep_report(sweep_json_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write sweep.md, sweep.html and sweep.png (all methods on one trade-off plot); return paths.

    The x axis is compression on a log scale: at high sparsity "% saved" crowds every method
    into the last few percent, while compression keeps 10x and 30x visibly apart.
    """
    path = Path(sweep_json_path)
    sweep = read_json(path)
    if not isinstance(sweep, dict) or not isinstance(sweep.get("methods"), dict):
        raise CheckpointError(f"{path} lacks a 'methods' object: not a secateur sweep.json")
    fig = tradeoff_figure([], sweep.get("max_drop"), series=sweep["methods"], x_axis="compression", y_scale="symlog",
                          title="Sweep: validation accuracy drop vs compression, by method")
    pngs = {rundir.SWEEP_PNG: png_bytes(fig)}
    folder = Path(out_dir)
    paths = write_report(folder, rundir.SWEEP_REPORT, _sweep_blocks(sweep, rundir.SWEEP_PNG), pngs)
    return {"md": paths["md"], "html": paths["html"], "png": folder / rundir.SWEEP_PNG}
