"""Pareto plots per network: test error against compression, secateur's points and curves beside the
published ones (:data:`secateur.report.published.PUBLISHED`: Han 2015, DNS 2016, Soft weight sharing
2017, Sparse VD 2017, and for LeNet-5 the structured L0-sep, BC-GNJ and SBP, computed from their
kept widths).

secateur's points come from whichever of these files exist in ``bench/results`` (missing ones are
skipped, and named in the MD):

- ``han_table.json``, ``han_table_rerun.json``: the drop-bound search (``han``, ``--max-drop 0.1``);
- ``channels.json``, ``granularities.json``: LeNet-5 with channels removed, other granularities;
- ``figure5.json``: Figure 5's L2 iterative prune-and-retrain curve (global magnitude, one short retraining
  per point);
- ``sweep_<net>.json``: a ``secateur sweep --test`` per network, one curve per method;
- ``learned.json``: learned sparsity rows (``model``, ``method``, ``compression``, ``error_after``), when
  present, in a list or under ``rows`` / ``models``.

    python bench/pareto.py [--results bench/results]

Writes ``pareto_<net>.png``, ``pareto.json`` and ``pareto.md`` into the results folder.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from secateur.report.figures import pareto_figure, png_bytes
from secateur.report.published import PUBLISHED

RESULTS = Path(__file__).resolve().parent / "results"
NETS = ("lenet300", "lenet5")
Series = dict[str, list[tuple[float, float]]]


def _read(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def search_points(results: Path, net: str) -> Iterator[tuple[str, float, float]]:
    """(label, compression, test error %) of every single secateur run found for ``net``."""
    for name, label in (("han_table.json", "search han, 0.1 bound"), ("han_table_rerun.json",
                                                                       "search han, 0.1 bound (re-run)")):
        row = ((_read(results / name) or {}).get("models") or {}).get(net)
        if row:
            yield label, row["compression"], row["error_after"]
    row = ((_read(results / "channels.json") or {}).get("models") or {}).get(net)
    if row:
        yield f"search {row.get('method')} / {row.get('granularity')} (structure)", row["compression"], \
            row["error_after"]
    grains = _read(results / "granularities.json") or {}
    if grains.get("model") == net:
        for key, row in (grains.get("rows") or {}).items():
            yield f"search {row.get('method')} / {key}", row["compression"], row["error_after"]


def figure5_curves(results: Path, net: str) -> Series:
    """Figure 5's best curve of ``net`` (L2, iterative prune and retrain) as (compression, test error %)."""
    entry = ((_read(results / "figure5.json") or {}).get("nets") or {}).get(net) or {}
    method = (_read(results / "figure5.json") or {}).get("method", "magnitude")
    return {f"{method}, {c['label'].replace(' regularization', '')} (Fig. 5)":
            [(p["compression"], 100 * (1 - p["test_accuracy"])) for p in c["points"]]
            for c in entry.get("curves", []) if c["key"] == "l2-iterative"}


def sweep_curves(results: Path, net: str) -> Series:
    """``sweep_<net>.json`` (a ``secateur sweep --test``): one curve per method."""
    sweep = _read(results / f"sweep_{net}.json") or {}
    return {f"{method} (sweep, {sweep.get('schedule')})":
            [(p["compression"], 100 * (1 - p["test_accuracy"])) for p in points if "test_accuracy" in p]
            for method, points in (sweep.get("methods") or {}).items()}


def learned_curves(results: Path, net: str) -> Series:
    """``learned.json`` rows of ``net`` grouped by method (any of a few layouts; unknown ones skipped)."""
    data = _read(results / "learned.json")
    rows = data if isinstance(data, list) else (data or {}).get("rows") or (data or {}).get("models") or []
    if isinstance(rows, Mapping):
        rows = [dict(r, model=r.get("model", k.split("/")[0])) for k, r in rows.items() if isinstance(r, Mapping)]
    series: Series = {}
    for row in rows:
        if isinstance(row, Mapping) and row.get("model") == net and {"compression", "error_after"} <= set(row):
            series.setdefault(f"{row.get('method', 'learned')} (learned)", []).append(
                (float(row["compression"]), float(row["error_after"])))
    return series


def network(results: Path, net: str) -> dict:
    """Everything drawn for one network."""
    published = PUBLISHED.get(net)
    curves = {**sweep_curves(results, net), **figure5_curves(results, net), **learned_curves(results, net)}
    points = [{"label": label, "compression": c, "error": e} for label, c, e in search_points(results, net)]
    return {"published": [vars(p) for p in published.points], "published_dense_error": published.dense_error,
            "secateur_points": points, "secateur_curves": {k: [list(p) for p in v] for k, v in curves.items()}}


def draw(net: str, entry: Mapping[str, Any]) -> bytes:
    """The Pareto plot of one network as PNG bytes."""
    series = {f"secateur: {k}": [tuple(p) for p in v] for k, v in entry["secateur_curves"].items()}
    series.update({f"secateur: {p['label']}": [(p["compression"], p["error"])] for p in entry["secateur_points"]})
    published = [(p["method"], p["compression"], p["error"]) for p in entry["published"] if p["kind"] != "structure"]
    structure = [(f"{p['method']} {p['architecture']}", p["compression"], p["error"])
                 for p in entry["published"] if p["kind"] == "structure"]
    fig = pareto_figure(series, published, title=f"{PUBLISHED.describe(net)}: test error vs compression",
                        dense={f"published dense ({entry['published_dense_error']:.2f}%)":
                               entry["published_dense_error"]}, structure=structure)
    return png_bytes(fig)


def markdown(entries: Mapping[str, Any], missing: list[str]) -> str:
    """Every point per network, published first."""
    lines = ["| network | who | compression | test error |", "|---|---|---:|---:|"]
    for net, entry in entries.items():
        for p in entry["published"]:
            arch = f" ({p['architecture']}, structure)" if p["architecture"] else ""
            lines.append(f"| {net} | {p['method']}{arch} (published) | {p['compression']:.1f}x | {p['error']:.2f}% |")
        for p in entry["secateur_points"]:
            lines.append(f"| {net} | secateur: {p['label']} | {p['compression']:.1f}x | {p['error']:.2f}% |")
        for label, pts in entry["secateur_curves"].items():
            cells = ", ".join(f"{c:.1f}x: {e:.2f}%" for c, e in pts)
            lines.append(f"| {net} | secateur: {label} | curve | {cells} |")
    if missing:
        lines += ["", "Not found (skipped): " + ", ".join(missing)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--nets", default=",".join(NETS))
    args = parser.parse_args()
    names = ["han_table.json", "han_table_rerun.json", "channels.json", "granularities.json", "figure5.json",
             "learned.json", *(f"sweep_{n}.json" for n in NETS)]
    missing = [n for n in names if not (args.results / n).is_file()]
    entries = {net: network(args.results, net) for net in args.nets.split(",")}
    for net, entry in entries.items():
        (args.results / f"pareto_{net}.png").write_bytes(draw(net, entry))
    (args.results / "pareto.json").write_text(json.dumps(entries, indent=1))
    (args.results / "pareto.md").write_text(markdown(entries, missing) + "\n")
    print(markdown(entries, missing))


if __name__ == "__main__":
    main()
