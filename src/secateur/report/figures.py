"""The report's figures: the search's trade-off, per-layer weights kept, per-layer sensitivity.

Figures are drawn on :class:`matplotlib.figure.Figure` directly (Agg, no pyplot, no global
state), so drawing one never touches another; :func:`png_bytes` renders one to PNG bytes for
the report writer, which embeds them in the HTML.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from secateur.report.blocks import fmt_count, fmt_times, layer_kept

Point = tuple[float, float, Mapping[str, Any]]  # (x, drop, the round or sweep point itself)


def png_bytes(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (deterministic: no software/date metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


# ----------------------------------------------------------------------------- trade-off


def _saved(point: Mapping[str, Any], params_baseline: float | None) -> float | None:
    """Size saved in % (1 - nonzero/baseline); falls back on the compression ratio."""
    if params_baseline and point.get("params_nonzero") is not None:
        return 100 * (1 - point["params_nonzero"] / params_baseline)
    c = point.get("compression")
    return 100 * (1 - 1 / c) if c else None


def _feasible(point: Mapping[str, Any], max_drop: float | None) -> bool:
    """A round's own verdict, else drop <= bound (True when there is no bound)."""
    if point.get("feasible") is not None:
        return bool(point["feasible"])
    return max_drop is None or point.get("drop", 0.0) <= max_drop


def _drop_cap(drops: Sequence[float], feasible_drops: Sequence[float], max_drop: float | None) -> float | None:
    """Upper y limit, so that one disastrous round does not flatten the region near the bound."""
    if not drops:
        return None
    base = 5 * max_drop if max_drop else 5.0
    cap = max(base, 0.5, 1.3 * max(feasible_drops, default=0.0))
    return cap if max(drops) > 1.05 * cap else None


def _xy(points: Sequence[Mapping[str, Any]], x_axis: str, params_baseline: float | None) -> list[Point]:
    """(x, drop, point) for every point that has both coordinates, sorted by x."""
    out: list[Point] = []
    for p in points:
        x = p.get("compression") if x_axis == "compression" else _saved(p, params_baseline)
        if x is not None and p.get("drop") is not None:
            out.append((x, p["drop"], p))
    return sorted(out, key=lambda t: t[0])


def _plot_points(ax: Axes, xy: list[Point], max_drop: float | None, cap: float | None, color: str, label: str,
                 line: bool) -> None:
    """Feasible points filled, infeasible red crosses; points beyond ``cap`` as ▲ at the cap, value printed."""
    if line and xy:
        ax.plot([x for x, *_ in xy], [min(d, cap) if cap else d for _, d, _ in xy], "-", color=color,
                lw=1.2, alpha=0.6, label=label)
    for ok in (True, False):
        sel = [(x, d) for x, d, p in xy if _feasible(p, max_drop) == ok and not (cap and d > cap)]
        if sel:
            name = ("feasible round" if ok else "infeasible round (rolled back)") if not line else \
                (None if ok or "beyond the bound" in ax.get_legend_handles_labels()[1] else "beyond the bound")
            ax.scatter([x for x, _ in sel], [d for _, d in sel], s=42, zorder=3, label=name,
                       facecolors=color if ok else "white", edgecolors=color if ok else "#c0392b",
                       marker="o" if ok else "X", linewidths=1.4)
    if not cap:
        return
    off = [(x, d) for x, d, _ in xy if d > cap]
    if off:
        ax.scatter([x for x, _ in off], [cap] * len(off), s=50, marker="^", zorder=3, color="#c0392b",
                   label=None if line else f"drop above {cap:.2f} pts (value printed)")
    for x, d in off:
        ax.annotate(f"{d:.1f}", (x, cap), xytext=(0, -12), textcoords="offset points",
                    ha="center", fontsize=7, color="#c0392b")


def _label_rounds(ax: Axes, xy: list[Point], cap: float | None) -> None:
    """The round number beside each point, so the plot can be read against the rounds table."""
    for x, d, p in xy:
        if p.get("round") is not None:
            ax.annotate(str(p["round"]), (x, min(d, cap) if cap else d), xytext=(5, 4),
                        textcoords="offset points", fontsize=7, color="#555")


def _annotate_chosen(ax: Axes, xy: list[Point], chosen: int, cap: float | None, x_axis: str,
                     max_drop: float | None) -> None:
    """Star the chosen round and label it (compression, size saved, drop) above the bound line."""
    for x, d, p in xy:
        if p.get("round") != chosen:
            continue
        y = min(d, cap) if cap else d
        ax.scatter([x], [y], s=260, marker="*", color="#f1c40f", edgecolors="black", zorder=4,
                   label=f"chosen (round {chosen})")
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        ty = max(y, max_drop if max_drop is not None else y) + 0.18 * (y1 - y0)
        frac = (x - x0) / (x1 - x0) if x_axis == "saved" and x1 > x0 else 1.0
        left = frac < 0.45  # near the left edge the box goes to the right of the star
        tx = x + 0.03 * (x1 - x0) if left else min(x0 + 0.62 * (x1 - x0), x)
        saved = "" if x_axis == "compression" else f", {x:.1f}% saved"
        text = f"chosen: round {chosen}\n{fmt_times(p.get('compression'))}{saved}\ndrop {d:.2f} pts"
        ax.annotate(text, (x, y), xytext=(tx, min(ty, y0 + 0.8 * (y1 - y0))), ha="left" if left else "right",
                    va="bottom",
                    fontsize=9, bbox={"boxstyle": "round", "fc": "#fffbe6", "ec": "#b7950b"},
                    arrowprops={"arrowstyle": "->", "color": "#7d6608"}, zorder=5)
        return


def tradeoff_figure(points: Sequence[Mapping[str, Any]], max_drop: float | None, chosen: int | None = None,
                    *, series: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                    params_baseline: float | None = None, x_axis: str = "saved", y_scale: str = "linear",
                    title: str | None = None) -> Figure:
    """Size saved (or compression, log axis) against validation accuracy drop, with the bound.

    ``points`` are history rounds (``drop``, ``params_nonzero`` / ``compression``, ``feasible``,
    ``round``); ``series`` maps a name to more such lists, one coloured line each (sweeps).
    ``y_scale="linear"`` clips disastrous drops at the top edge (value printed) so the region
    near the bound stays readable; ``"symlog"`` shows every drop (linear below 1 point).
    """
    if x_axis not in ("saved", "compression") or y_scale not in ("linear", "symlog"):
        raise ValueError(f"x_axis must be saved|compression and y_scale linear|symlog, got {x_axis!r}, {y_scale!r}")
    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    groups = [("rounds", points, "#2e86c1", False)] if points else []
    colors = ["#2e86c1", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"]
    groups += [(name, pts, colors[i % len(colors)], True) for i, (name, pts) in enumerate((series or {}).items())]
    xys = [(_xy(pts, x_axis, params_baseline), color, name, line) for name, pts, color, line in groups]
    everything = [t for xy, *_ in xys for t in xy]
    cap = None if y_scale == "symlog" else _drop_cap(
        [d for _, d, _ in everything], [d for _, d, p in everything if _feasible(p, max_drop)], max_drop)
    for xy, color, name, line in xys:
        _plot_points(ax, xy, max_drop, cap, color, name, line)
    if points and not series:
        _label_rounds(ax, xys[0][0], cap)
    if max_drop is not None:
        ax.axhline(max_drop, color="#c0392b", ls="--", lw=1.2, label=f"bound: drop = {max_drop:.2f} pts")
    ax.axhline(0, color="#999", lw=0.8)
    if y_scale == "symlog":
        _symlog_drops(ax, [d for _, d, _ in everything], max_drop)
    _tradeoff_axes(ax, x_axis, cap, bool(everything))
    if chosen is not None and points:
        _annotate_chosen(ax, xys[0][0], chosen, cap, x_axis, max_drop)
    _legend(ax, series or {})
    ax.set_title(title or "Trade-off: size saved vs validation accuracy drop")
    return fig


def _legend(ax: Axes, series: Mapping[str, Any]) -> None:
    """The legend, the sweep's method lines first."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i] not in series, i))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left", fontsize=8,
              framealpha=0.9)


_NICE_TICKS = tuple(m * 10**e for e in range(-2, 5) for m in (1, 2, 3, 5))


def _symlog_drops(ax: Axes, drops: Sequence[float], max_drop: float | None) -> None:
    """Symlog y axis for drops: linear near zero (where the bound is), logarithmic for disasters."""
    linthresh = min(max(5 * max_drop, 0.2), 5.0) if max_drop else 1.0
    ax.set_yscale("symlog", linthresh=linthresh, linscale=2.0)
    lo = min(min(drops, default=0.0), 0.0)
    hi = max(max(drops, default=1.0), max_drop or 0.0, linthresh)
    bottom = lo - 0.1 * linthresh if lo > -linthresh else lo * 1.5
    top = hi * 1.6 if hi > linthresh else hi + 0.1 * linthresh
    nice = [t for t in _NICE_TICKS if t >= linthresh / 5]  # 1-2-3-5 steps, not crowded near 0
    ticks = [0.0] + [t for t in nice if t <= top] + [-t for t in nice if -t >= bottom]
    ax.set_yticks(sorted(set(ticks)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_ylim(bottom, top)


def _tradeoff_axes(ax: Axes, x_axis: str, cap: float | None, has_points: bool) -> None:
    """Labels, scales and limits of the trade-off plot."""
    if x_axis == "compression":
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.set_xticks([t for t in _NICE_TICKS if lo <= t <= hi] or [lo, hi])
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlabel("compression (dense parameters / nonzero parameters, log scale)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=9, steps=[1, 2, 5, 10]))  # no 82.5% ticks
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.set_xlabel("size saved (% of parameters pruned away = 1 - nonzero / baseline)")
    ax.set_ylabel("validation accuracy drop (percentage points)\nlower is better")
    if cap:
        lo = ax.get_ylim()[0]
        ax.set_ylim(lo, cap * 1.08)
    if not has_points:
        ax.set_xlim(*((1, 100) if x_axis == "compression" else (0, 100)))
        ax.text(0.5, 0.5, "no rounds recorded", transform=ax.transAxes, ha="center", color="#777")
    ax.grid(True, alpha=0.3)


# ----------------------------------------------------------------------------- layers and sensitivity


def layers_figure(layers: Sequence[Mapping[str, Any]]) -> Figure:
    """Per-layer share of weights kept (horizontal bars): dense before (100%) vs kept after."""
    names = [str(layer.get("name", f"layer {i}")) for i, layer in enumerate(layers)]
    kept = [100 * (layer_kept(layer) or 0.0) for layer in layers]
    fig = Figure(figsize=(8.5, 1.4 + 0.42 * max(len(names), 1)), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(names)))
    ax.barh(ys, [100] * len(names), color="#d5d8dc", height=0.75, label="before (dense): 100%")
    ax.barh(ys, kept, color="#2e86c1", height=0.5, label="after: weights kept")
    for y, k, layer in zip(ys, kept, layers):
        inside = k > 60  # long bars carry their label inside, so it never runs past 100%
        ax.text(k - 1 if inside else k + 1, y, f"{k:.2f}%  ({fmt_count(layer.get('nonzero'))} / "
                f"{fmt_count(layer.get('weights'))})", va="center", ha="right" if inside else "left",
                fontsize=8, color="white" if inside else "black")
    ax.set_yticks(ys, names, fontsize=9)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first layer on top, no empty margins
    ax.set_xlim(0, 100)
    ax.xaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.set_xlabel("weights kept (% of the layer's dense weights)")
    fig.suptitle("Per-layer weights kept")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def sensitivity_figure(sensitivity: Mapping[str, Any]) -> Figure:
    """One curve per layer: validation accuracy against pruning level, chosen levels marked."""
    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    curves = sensitivity.get("layers") or {}
    chosen = sensitivity.get("chosen") or {}
    for i, (name, pts) in enumerate(curves.items()):
        pts = sorted((p for p in pts if p.get("val_accuracy") is not None), key=lambda p: p["level"])
        xs, ys = [p["level"] for p in pts], [100 * p["val_accuracy"] for p in pts]
        color = _color(i, len(curves))
        ax.plot(xs, ys, "o-", ms=3.5, lw=1.4, color=color, label=name)
        if name in chosen and xs:
            ax.scatter([chosen[name]], [float(np.interp(chosen[name], xs, ys))], marker="D", s=45,
                       color=color, edgecolors="black", zorder=4)
    if sensitivity.get("baseline_val") is not None:
        base = 100 * sensitivity["baseline_val"]
        ax.axhline(base, color="#555", ls="--", lw=1, label=f"baseline {base:.2f}%")
        if sensitivity.get("tolerance") is not None:
            ax.axhline(base - sensitivity["tolerance"], color="#c0392b", ls=":", lw=1.2,
                       label=f"tolerance: -{sensitivity['tolerance']:.2f} pts")
    ax.set_xlabel(f"pruning level ({sensitivity.get('method', 'criterion')})")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Per-layer sensitivity (one layer pruned at a time" + ("; ◆ = chosen level)" if chosen else ")"))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(curves) > 8 else 1, framealpha=0.9)
    return fig


def _color(i: int, n: int) -> tuple:
    """The i-th of n distinct colours (tab10, or tab20 for many curves)."""
    return colormaps["tab10" if n <= 10 else "tab20"](i % (10 if n <= 10 else 20))


# ----------------------------------------------------------------------------- Han's Figure 5 and Pareto plots


_CURVE_STYLES = (("#1f77b4", "o", ":"), ("#ff7f0e", "s", ":"), ("#2ca02c", "^", "-"), ("#9467bd", "D", "-"),
                 ("#d62728", "o", "-"), ("#8c564b", "v", "-"), ("#7f7f7f", "x", "-"))


def accuracy_loss_figure(curves: Mapping[str, Sequence[tuple[float, float]]], *, title: str,
                         floor: float = -4.5, note: str | None = None) -> Figure:
    """Han et al. (2015) Figure 5's look: accuracy change (points, pruned - dense) against the share of
    parameters pruned away (%), one line per curve; points below ``floor`` sit on the bottom edge as
    open triangles with their value written beside them."""
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, points) in enumerate(curves.items()):
        color, marker, line = _CURVE_STYLES[i % len(_CURVE_STYLES)]
        xs, ys = zip(*sorted(points)) if points else ((), ())
        shown_ys = [max(y, floor) for y in ys]
        ax.plot(xs, shown_ys, ls=line, marker=marker, ms=5, lw=1.6, color=color, label=label)
        for x, y in zip(xs, ys):
            if y < floor:
                ax.plot([x], [floor], marker="v", ms=9, mfc="white", color=color)
                ax.annotate(f"{y:.1f}", (x, floor), textcoords="offset points", xytext=(4, 6 + 9 * (i % 3)),
                            fontsize=7, color=color)
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_ylim(floor - 0.25, 0.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_xlabel("parameters pruned away" + (f" ({note})" if note else ""))
    ax.set_ylabel("accuracy loss (test accuracy, points: pruned - dense)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    return fig


_PUBLISHED_MARKERS = ("*", "P", "X", "D", "p", "h", "s", "^")


def pareto_figure(series: Mapping[str, Sequence[tuple[float, float]]],
                  published: Sequence[tuple[str, float, float]], *, title: str,
                  dense: Mapping[str, float] | None = None,
                  structure: Sequence[tuple[str, float, float]] = ()) -> Figure:
    """Test error (%) against compression (log x): secateur's curves (``{name: [(compression, error)]}``,
    lines; one-point series are single runs) beside published points (``(label, compression, error)``:
    black markers, labelled; ``structure``: neurons / filters removed, open red markers), with
    horizontal lines for dense errors (``{label: error}``). The y axis stops at 1.6x the largest
    published or dense error; a curve with points above says so in the legend."""
    fig = Figure(figsize=(9.0, 5.6), layout="constrained")
    ax = fig.add_subplot()
    known = [e for _, _, e in (*published, *structure)] + list((dense or {}).values())
    top = 1.6 * max(known) if known else None
    for i, (name, points) in enumerate(series.items()):
        color, marker, _ = _CURVE_STYLES[(i + 2) % len(_CURVE_STYLES)]
        xs, ys = zip(*sorted(points)) if points else ((), ())
        single = len(xs) == 1
        above = top is not None and any(y > top for y in ys)
        ax.plot(xs, ys, "" if single else "-", marker=marker, ms=9 if single else 5, lw=1.4, color=color,
                mec="black" if single else color, label=name + (" (some points above the plot)" if above else ""))
    groups = [(published, "black", "black"), (structure, "white", "#c0392b")]
    labelled = []
    for n, (label, compression, error) in enumerate(p for group, _, _ in groups for p in group):
        face, edge = groups[0][1:] if n < len(published) else groups[1][1:]
        kind = "published" if n < len(published) else "published, structure"
        ax.scatter([compression], [error], marker=_PUBLISHED_MARKERS[n % len(_PUBLISHED_MARKERS)], s=110,
                   facecolors=face, edgecolors=edge, linewidths=1.5, zorder=5, label=f"{label} ({kind})")
        labelled.append((label, compression, error, edge, 5 if n % 2 else -11))
    for j, (label, error) in enumerate((dense or {}).items()):
        ax.axhline(error, color="#555", ls=("--", ":", "-.")[j % 3], lw=1, label=label)
    if top is not None:
        shown = known + [y for points in series.values() for _, y in points if y <= top]
        ax.set_ylim(0.85 * min(shown), top)
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    hi *= 1.3
    for label, compression, error, color, dy in labelled:  # labels of the rightmost points go to their left
        left = np.log(compression / lo) > 0.85 * np.log(hi / lo)
        ax.annotate(label, (compression, error), textcoords="offset points", xytext=(-9, -16) if left else (7, dy),
                    ha="right" if left else "left", fontsize=8, color=color)
    steps = (1, 2, 5) if hi / lo <= 150 else (1, 3)  # fewer ticks over a wide range
    ax.set_xticks([t for t in _NICE_TICKS if lo <= t <= hi and round(t / 10 ** np.floor(np.log10(t))) in steps]
                  or [lo, hi])
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("compression, log scale\n(dense parameters / nonzero parameters)")
    ax.set_ylabel("test error (%)\nlower is better")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, framealpha=0.9)
    return fig
