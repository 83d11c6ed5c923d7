"""Markdown / HTML reports and plots from a run directory (schema: docs/RUNDIR.md).

The report is first built as a list of small *blocks* (heading, key-value list, table,
paragraph, figure); the markdown and the HTML are two renderers of the same blocks, so both
always show the same numbers. Figures are drawn on :class:`matplotlib.figure.Figure` directly
(Agg, no pyplot, no global state) and embedded in the HTML as base64 data URIs, so
``report.html`` is a single self-contained file. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from secateur.errors import CheckpointError
from secateur.io.rundir import read_history
from secateur.io.storage import atomic_write_bytes, read_json

NOTE = ("All decisions (pruning levels, rollbacks, the chosen model) were made on the validation "
        "split; test accuracy is reported for the baseline and the final model only, and was "
        "never used to choose anything.")
SWEEP_NOTE = ("Every point was measured on the validation split; a sweep chooses no model, so it maps "
              "the trade-off of each method rather than giving a test result to quote.")
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


def _pct(fraction: float | None) -> str:
    """A fraction in [0, 1] as a percentage with 2 decimals."""
    return DASH if fraction is None else f"{100 * fraction:.2f}%"


def _pts(points: float | None) -> str:
    """An accuracy difference in percentage points, 2 decimals."""
    return DASH if points is None else f"{points:.2f} pts"


def _count(n: float | None) -> str:
    """An integer count with thousands separators."""
    return DASH if n is None else f"{int(round(n)):,}"


def _times(c: float | None) -> str:
    """A compression ratio: 1 decimal and an 'x'."""
    return DASH if c is None else f"{c:.1f}x"


def _bytes(n: float | None) -> str:
    """A byte count, exact and in MiB."""
    return DASH if n is None else f"{int(n):,} ({n / 2**20:.2f} MiB)"


def _ms(seconds: float | None) -> str:
    """A latency in milliseconds."""
    return DASH if seconds is None else f"{1000 * seconds:.3f} ms"


def _duration(seconds: float | None) -> str:
    """A wall time in the largest sensible unit."""
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _ratio(after: float | None, before: float | None) -> str:
    """Relative change after/before as a signed percentage."""
    if after is None or not before:
        return DASH
    change = 100 * (after / before - 1)
    return "unchanged" if abs(change) < 0.005 else f"{change:+.2f}%"


def _share(part: float | None, whole: float | None) -> float | None:
    """part / whole, or None when it is undefined."""
    return None if part is None or not whole else part / whole


# ----------------------------------------------------------------------------- IO


REQUIRED = ("baseline", "pruned", "params", "compression", "layers")


def load_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """Read and check ``results.json`` and ``history.jsonl`` (may be absent: no rounds) of a run."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} does not exist")
    results = read_json(run / "results.json")
    missing = [key for key in REQUIRED if key not in results]
    if missing:
        raise CheckpointError(f"{run / 'results.json'} lacks {', '.join(missing)}: the run did not finish")
    return results, read_history(run)


def _png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (deterministic: no software/date metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


# ----------------------------------------------------------------------------- figures


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


def _xy(points: Sequence[Mapping[str, Any]], x_axis: str, params_baseline: float | None) -> list[tuple]:
    """(x, drop, point) for every point that has both coordinates, sorted by x."""
    out = []
    for p in points:
        x = p.get("compression") if x_axis == "compression" else _saved(p, params_baseline)
        if x is not None and p.get("drop") is not None:
            out.append((x, p["drop"], p))
    return sorted(out, key=lambda t: t[0])


def _plot_points(ax, xy: list[tuple], max_drop, cap, color, label, line: bool) -> None:
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
    off = [(x, d) for x, d, _ in xy if cap and d > cap]
    if off:
        ax.scatter([x for x, _ in off], [cap] * len(off), s=50, marker="^", zorder=3, color="#c0392b",
                   label=None if line else f"drop above {cap:.2f} pts (value printed)")
    for x, d in off:
        ax.annotate(f"{d:.1f}", (x, cap), xytext=(0, -12), textcoords="offset points",
                    ha="center", fontsize=7, color="#c0392b")


def _label_rounds(ax, xy: list[tuple], cap: float | None) -> None:
    """The round number beside each point, so the plot can be read against the rounds table."""
    for x, d, p in xy:
        if p.get("round") is not None:
            ax.annotate(str(p["round"]), (x, min(d, cap) if cap else d), xytext=(5, 4),
                        textcoords="offset points", fontsize=7, color="#555")


def _annotate_chosen(ax, xy: list[tuple], chosen: int, cap, x_axis: str, max_drop: float | None) -> None:
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
        text = f"chosen: round {chosen}\n{_times(p.get('compression'))}{saved}\ndrop {d:.2f} pts"
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
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i] not in (series or {}), i))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left", fontsize=8,
              framealpha=0.9)
    ax.set_title(title or "Trade-off: size saved vs validation accuracy drop")
    return fig


_NICE_TICKS = tuple(m * 10**e for e in range(-2, 5) for m in (1, 2, 3, 5))


def _symlog_drops(ax, drops: Sequence[float], max_drop: float | None) -> None:
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


def _tradeoff_axes(ax, x_axis: str, cap: float | None, has_points: bool) -> None:
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


def layers_figure(layers: Sequence[Mapping[str, Any]]) -> Figure:
    """Per-layer share of weights kept (horizontal bars): dense before (100%) vs kept after."""
    names = [str(layer.get("name", f"layer {i}")) for i, layer in enumerate(layers)]
    kept = [100 * (_layer_kept(layer) or 0.0) for layer in layers]
    fig = Figure(figsize=(8.5, 1.4 + 0.42 * max(len(names), 1)), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(names)))
    ax.barh(ys, [100] * len(names), color="#d5d8dc", height=0.75, label="before (dense): 100%")
    ax.barh(ys, kept, color="#2e86c1", height=0.5, label="after: weights kept")
    for y, k, layer in zip(ys, kept, layers):
        inside = k > 60  # long bars carry their label inside, so it never runs past 100%
        ax.text(k - 1 if inside else k + 1, y, f"{k:.2f}%  ({_count(layer.get('nonzero'))} / "
                f"{_count(layer.get('weights'))})", va="center", ha="right" if inside else "left",
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
    import numpy as np

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
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20"](i % (10 if n <= 10 else 20))


# ----------------------------------------------------------------------------- report content


def _layer_kept(layer: Mapping[str, Any]) -> float | None:
    """Fraction of a layer's weights kept: ``kept``, else nonzero / weights."""
    if layer.get("kept") is not None:
        return layer["kept"]
    return _share(layer.get("nonzero"), layer.get("weights"))


def _acc(block: Mapping[str, Any] | None, split: str) -> float | None:
    """Accuracy of ``split`` from ``{"val": {"accuracy": a}}`` (or ``{"val": a}``)."""
    value = (block or {}).get(split)
    return value.get("accuracy") if isinstance(value, Mapping) else value


def _model_name(model: Any) -> str:
    """``name (k=v, ...)`` from results' ``model`` entry."""
    if not isinstance(model, Mapping):
        return DASH if model is None else str(model)
    args = model.get("args") or {}
    inner = ", ".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, Mapping) else str(args)
    return f"{model.get('name', DASH)}" + (f" ({inner})" if inner else "")


def _header(results: Mapping[str, Any]) -> Meta:
    """Model, dataset, method, schedule, bound, wall time, rounds."""
    method = f"{results.get('method', DASH)} / {results.get('granularity', DASH)}"
    chosen = results.get("chosen_round")
    rounds = f"{results.get('rounds', DASH)}" + (f" (chosen: round {chosen})" if chosen is not None else
                                                  " (no feasible round: baseline kept)")
    rows = [("model", _model_name(results.get("model"))), ("dataset", str(results.get("dataset", DASH))),
            ("method / granularity", f"{method} ({results.get('kind', 'unstructured')})"),
            ("schedule", str(results.get("schedule", DASH))),
            ("max drop", _pts(results.get("max_drop")) + " (validation accuracy)")]
    if "acceptance" in results:  # runs from before the noise-aware rule have neither
        rows += [("acceptance", _acceptance(results["acceptance"])), ("polish", _polish(results.get("polish")))]
    return Meta((*rows, ("wall time", _duration(results.get("seconds"))), ("rounds", rounds)))


def _acceptance(acceptance: Mapping[str, Any] | None) -> str:
    """The rule rounds were judged by (see secateur.search.acceptance)."""
    if not acceptance:
        return DASH
    if not acceptance.get("paired") or not acceptance.get("confidence"):
        return "drop <= max drop (plain rule)"
    return f"drop + {acceptance['confidence']:g} paired standard errors <= max drop"


def _polish(polish: Mapping[str, Any] | None) -> str:
    """Whether the final retraining ran and was kept."""
    if not polish:
        return "none"
    verdict = "kept" if polish.get("kept") else "not kept (validation accuracy went down)"
    return (f"{polish.get('epochs')} epochs, val accuracy {_pct(polish.get('val_accuracy_before'))} -> "
            f"{_pct(polish.get('val_accuracy_after'))}: {verdict}")


def _before_after(results: Mapping[str, Any]) -> Table:
    """Baseline vs pruned: accuracy, parameters, compression, MACs, bytes, latency."""
    base, pruned, drop = results["baseline"], results["pruned"], results.get("drop") or {}
    params, macs, size = results["params"], results.get("macs") or {}, results.get("bytes") or {}
    rows = [(f"accuracy ({s})", _pct(_acc(base, s)), _pct(_acc(pruned, s)),
             DASH if drop.get(s) is None else f"{-drop[s]:+.2f} pts") for s in ("val", "test")]
    rows += [("parameters (total)", _count(params.get("baseline")), _count(params.get("total")),
              _ratio(params.get("total"), params.get("baseline"))),
             ("parameters (nonzero)", _count(params.get("baseline")), _count(params.get("nonzero")),
              _ratio(params.get("nonzero"), params.get("baseline"))),
             ("compression", _times(1.0), _times(results["compression"]), DASH),
             ("MACs (dense)", _count(macs.get("baseline")), _count(macs.get("dense")),
              _ratio(macs.get("dense"), macs.get("baseline"))),
             ("MACs (nonzero)", _count(macs.get("baseline")), _count(macs.get("nonzero")),
              _ratio(macs.get("nonzero"), macs.get("baseline"))),
             ("dense file size (bytes)", _bytes(size.get("baseline")), _bytes(size.get("pruned")),
              _ratio(size.get("pruned"), size.get("baseline")))]
    if size.get("sparse_csr") is not None:
        rows.append(("sparse CSR size (bytes, vs dense baseline)", _bytes(size.get("baseline")),
                     _bytes(size["sparse_csr"]), _ratio(size["sparse_csr"], size.get("baseline"))))
    latency = results.get("latency") or {}
    for batch in sorted({k.split("_")[0] for k in latency}, key=lambda b: int(b[1:]) if b[1:].isdigit() else 0):
        before, after = latency.get(f"{batch}_before"), latency.get(f"{batch}_after")
        rows.append((f"latency (batch {batch[1:]})", _ms(before), _ms(after), _ratio(after, before)))
    return Table(("", "baseline", "pruned", "change"), tuple(rows), ("l", "r", "r", "r"))


def _layers_table(layers: Sequence[Mapping[str, Any]]) -> Table:
    """Han et al. (2015) Table 2 form: weights, MACs, % weights kept, % MACs kept, plus Total."""
    rows = [(str(l.get("name", DASH)), _count(l.get("weights")), _count(l.get("nonzero")), _count(l.get("macs")),
             _pct(_layer_kept(l)), _pct(_share(l.get("macs_nonzero"), l.get("macs")))) for l in layers]

    def total(key: str) -> float | None:
        values = [l.get(key) for l in layers]
        return None if not values or None in values else sum(values)

    rows.append(("Total", _count(total("weights")), _count(total("nonzero")), _count(total("macs")),
                 _pct(_share(total("nonzero"), total("weights"))),
                 _pct(_share(total("macs_nonzero"), total("macs")))))
    return Table(("layer", "weights", "nonzero", "MACs (dense)", "weights kept", "MACs kept"),
                 tuple(rows), ("l", "r", "r", "r", "r", "r"))


def _channels_table(channels: Mapping[str, Mapping[str, Any]]) -> Table:
    """Structured runs: channels (or neurons) per layer before and after surgery."""
    rows = [(name, _count(c.get("before")), _count(c.get("after")), _pct(_share(c.get("after"), c.get("before"))))
            for name, c in channels.items()]
    return Table(("layer", "before", "after", "kept"), tuple(rows), ("l", "r", "r", "r"))


def _rounds_table(history: Sequence[Mapping[str, Any]], chosen: int | None) -> Table:
    """Every round of the search, the chosen one marked."""
    def yes(v: Any) -> str:
        return DASH if v is None else ("yes" if v else "no")

    rows = [(str(h.get("round", DASH)), DASH if h.get("strength") is None else f"{h['strength']:.3g}",
             _pct(h.get("val_accuracy")), _pts(h.get("drop")), _pts(h.get("margin")), yes(h.get("feasible")),
             yes(h.get("accepted")),
             _count(h.get("params_nonzero")), _times(h.get("compression")), _duration(h.get("seconds")),
             "**chosen**" if chosen is not None and h.get("round") == chosen else "") for h in history]
    return Table(("round", "strength", "val accuracy", "drop", "margin", "feasible", "accepted", "nonzero params",
                  "compression", "time", ""), tuple(rows), ("r", "r", "r", "r", "r", "l", "l", "r", "r", "r", "l"))


def _report_blocks(results: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                   figures: Sequence[tuple[str, str]]) -> list[Block]:
    """The whole report as blocks, shared by the markdown and HTML renderers."""
    title = f"secateur report: {_model_name(results.get('model')).split(' (')[0]} on {results.get('dataset', DASH)}"
    blocks: list[Block] = [Heading(title, 1), _header(results), Heading("Before / after"),
                           _before_after(results), Heading("Per layer (Han et al. 2015, Table 2 form)"),
                           _layers_table(results["layers"])]
    if results.get("channels"):
        blocks += [Heading("Kept channels"), _channels_table(results["channels"])]
    blocks += [Heading("Rounds"), _rounds_table(history, results.get("chosen_round"))]
    if figures:
        blocks += [Heading("Plots")] + [Image(caption, name) for caption, name in figures]
    return blocks + [Heading("Note on evaluation"), Para(NOTE)]


def results_markdown(results: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                     figures: Sequence[tuple[str, str]] = ()) -> str:
    """The run report as markdown; ``figures`` are ``(caption, png file name)`` pairs to link."""
    return to_markdown(_report_blocks(results, history, figures))


# ----------------------------------------------------------------------------- renderers


def _md_cell(text: str) -> str:
    """Escape a table cell for markdown."""
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> list[str]:
    """A GitHub-flavoured markdown table."""
    rule = ["---:" if a == "r" else "---" for a in t.align]
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |", "| " + " | ".join(rule) + " |"]
    return lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows] + [""]


def to_markdown(blocks: Sequence[Block]) -> str:
    """Render blocks as markdown."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Meta):
            lines += [f"- **{k}**: {v}" for k, v in b.items] + [""]
        elif isinstance(b, Table):
            lines += _md_table(b)
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Image):
            lines += [f"![{b.caption}]({b.filename})", "", f"*{b.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#fafafa;margin:0}
main{max-width:980px;margin:0 auto;padding:24px 28px;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #2e86c1;padding-bottom:6px}
h2{font-size:1.2em;margin-top:1.8em;color:#1b4f72}
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}
dt{font-weight:600}dd{margin:0}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 10px}
th{background:#eaf2f8}tr:nth-child(even) td{background:#f8f9f9}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{font-weight:500}
figure{margin:16px 0}img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
p.note{background:#fef9e7;border-left:4px solid #f1c40f;padding:8px 12px}
"""


def _html_cell(text: str, tag: str, align: str) -> str:
    """One escaped table cell (markdown bold ``**x**`` becomes <strong>)."""
    body = html.escape(text)
    if text.startswith("**") and text.endswith("**") and len(text) > 4:
        body = f"<strong>{html.escape(text[2:-2])}</strong>"
    return f'<{tag} class="{align}">{body}</{tag}>'


def _html_block(b: Block, images: Mapping[str, bytes]) -> str:
    """Render one block as HTML (every text escaped)."""
    e = html.escape
    if isinstance(b, Heading):
        return f"<h{b.level}>{e(b.text)}</h{b.level}>"
    if isinstance(b, Meta):
        return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in b.items) + "</dl>"
    if isinstance(b, Table):
        head = "<tr>" + "".join(_html_cell(h, "th", a) for h, a in zip(b.headers, b.align)) + "</tr>"
        body = "".join("<tr>" + "".join(_html_cell(c, "td", a) for c, a in zip(row, b.align)) + "</tr>"
                       for row in b.rows)
        return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
    if isinstance(b, Para):
        return f'<p class="note">{e(b.text)}</p>'
    data = base64.b64encode(images[b.filename]).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.caption, quote=True)}">'
            f"<figcaption>{e(b.caption)}</figcaption></figure>")


def to_html(blocks: Sequence[Block], images: Mapping[str, bytes]) -> str:
    """Render blocks as one self-contained HTML page; ``images`` maps PNG file names to bytes."""
    title = next((b.text for b in blocks if isinstance(b, Heading)), "secateur report")
    body = "\n".join(_html_block(b, images) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{body}\n</main></body></html>\n")


def _write_report(out_dir: Path, stem: str, blocks: Sequence[Block], pngs: Mapping[str, bytes]) -> dict[str, Path]:
    """Write the PNGs, ``<stem>.md`` and ``<stem>.html`` atomically; return their paths."""
    out: dict[str, Path] = {}
    for name, data in pngs.items():
        atomic_write_bytes(out_dir / name, data)
        out[name.rsplit(".", 1)[0]] = out_dir / name
    out["md"], out["html"] = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
    atomic_write_bytes(out["md"], to_markdown(blocks).encode("utf-8"))
    atomic_write_bytes(out["html"], to_html(blocks, pngs).encode("utf-8"))
    return out


# ----------------------------------------------------------------------------- entry points


def render_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots of a run directory; return their paths.

    Keys: ``md``, ``html``, ``tradeoff``, ``layers`` and, when the inputs exist,
    ``sensitivity`` and ``sweep_md`` / ``sweep_html`` / ``sweep_png``. Idempotent.
    """
    run = Path(run_dir)
    results, history = load_run(run)
    chosen = results.get("chosen_round")
    pngs = {"tradeoff.png": _png(tradeoff_figure(history, results.get("max_drop"), chosen,
                                                 params_baseline=results["params"].get("baseline"))),
            "layers.png": _png(layers_figure(results["layers"]))}
    figures = [("Trade-off: every round; size saved vs validation accuracy drop", "tradeoff.png"),
               ("Per-layer share of weights kept", "layers.png")]
    if (run / "sensitivity.json").is_file():
        pngs["sensitivity.png"] = _png(sensitivity_figure(read_json(run / "sensitivity.json")))
        figures.append(("Per-layer sensitivity: validation accuracy vs pruning level", "sensitivity.png"))
    out = _write_report(run, "report", _report_blocks(results, history, figures), pngs)
    if (run / "sweep.json").is_file():
        out.update({f"sweep_{k}": v for k, v in sweep_report(run / "sweep.json", run).items()})
    return out


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
        ("level", lambda p: _level(p.get("level"))), ("val accuracy", lambda p: _pct(p.get("val_accuracy")))]
    if any(p.get("test_accuracy") is not None for p in pts):
        columns.append(("test accuracy", lambda p: _pct(p.get("test_accuracy"))))
    columns += [("drop", lambda p: _pts(p.get("drop"))), ("compression", lambda p: _times(p.get("compression"))),
                ("size saved", lambda p: _pct(1 - 1 / p["compression"] if p.get("compression") else None)),
                ("nonzero params", lambda p: _count(p.get("params_nonzero")))]
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
        best = max(ok, key=lambda p: p["compression"], default=None)
        rows.append((name, _times(best and best["compression"]), _pts(best and best["drop"]),
                     _pct(best and best.get("val_accuracy")), _count(best and best.get("params_nonzero"))))
    return Table(("method", "best compression", "drop", "val accuracy", "nonzero params"), tuple(rows),
                 ("l", "r", "r", "r", "r"))


def _sweep_blocks(sweep: Mapping[str, Any], png_name: str) -> list[Block]:
    """The sweep report as blocks."""
    methods, max_drop, base = sweep.get("methods") or {}, sweep.get("max_drop"), sweep.get("baseline") or {}
    blocks: list[Block] = [Heading(f"secateur sweep: {_model_name(sweep.get('model')).split(' (')[0]} on "
                                   f"{sweep.get('dataset', DASH)}", 1),
                           Meta((("model", _model_name(sweep.get("model"))), ("dataset", str(sweep.get("dataset", DASH))),
                                 ("baseline accuracy (val / test)", f"{_pct(_acc(base, 'val'))} / {_pct(_acc(base, 'test'))}"),
                                 ("methods", ", ".join(methods) or DASH),
                                 ("schedule", str(sweep.get("schedule", DASH))),
                                 ("max drop", DASH if max_drop is None else _pts(max_drop))))]
    if max_drop is not None:
        blocks += [Heading("Best within the bound"), _sweep_best(methods, max_drop)]
    blocks += [Heading("Trade-off"), Image("Validation accuracy drop vs compression, one line per method", png_name)]
    for name, pts in methods.items():
        blocks += [Heading(f"Method: {name}"), _sweep_table(pts, max_drop)]
    return blocks + [Heading("Note on evaluation"), Para(SWEEP_NOTE)]


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
    pngs = {"sweep.png": _png(fig)}
    out = _write_report(Path(out_dir), "sweep", _sweep_blocks(sweep, "sweep.png"), pngs)
    return {"md": out["md"], "html": out["html"], "png": out["sweep"]}
