"""Pareto plots per network: test error against compression, secateur's points and curves beside the
published ones (:data:`secateur.report.published.PUBLISHED`: Han 2015, DNS 2016, Soft weight sharing
2017, Sparse VD 2017, and for LeNet-5 the structured L0-sep, BC-GNJ and SBP, computed from their
kept widths).

secateur's points come from whichever of these files exist in ``bench/results`` (missing ones are
skipped, and named in the MD):

- ``han_table.json``, ``han_table_rerun.json``, ``han_table_wall.json``: the drop-bound search (``han``,
  ``--max-drop 0.1``);
- ``channels.json``, ``granularities.json``: LeNet-5 with channels removed, other granularities;
- ``figure5.json``: Figure 5's L2 iterative prune-and-retrain curve (global magnitude, one short retraining
  per point);
- ``sweep_<net>.json``: a ``secateur sweep --test`` per network, one curve per method;
- ``learned*.json`` (``bench/learned.py``): the learned methods' runs as points, and the ``retrain`` part
  (Sparse VD cut to several compressions, then retrained with the masks) as one curve per phase.

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
    for name, label in (("han_table.json", "search han, 0.1 bound"),
                        ("han_table_rerun.json", "search han, 0.1 bound (re-run)"),
                        ("han_table_wall.json", "search han, 0.1 bound (2026-12-02 run)")):
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


def learned_rows(results: Path, net: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(part, row) of every finished ``bench/learned.py`` row of ``net`` in ``learned*.json`` (the row's
    key is ``NET/PART[-variant]``)."""
    for path in sorted(results.glob("learned*.json")):
        data = _read(path)
        for key, row in ((data.get("rows") if isinstance(data, Mapping) else None) or {}).items():
            if (isinstance(row, Mapping) and row.get("network") == net and not row.get("partial")
                    and {"compression", "test_error_after"} <= set(row)):
                yield key.split("/", 1)[1], row


def learned_points(results: Path, net: str) -> Iterator[tuple[str, float, float]]:
    """The learned methods' single runs (all but the retrain part's curve)."""
    for part, row in learned_rows(results, net):
        if not part.startswith("retrain"):
            label = row["method"].replace("secateur prune ", "search ")
            yield f"{label}, {row['epochs']} learn epochs", row["compression"], row["test_error_after"]


def learned_curves(results: Path, net: str) -> Series:
    """The retrain part: Sparse VD cut to several compressions and retrained with the masks, one curve
    per phase (its epochs and penalty)."""
    series: Series = {}
    for part, row in learned_rows(results, net):
        if part.startswith("retrain"):
            penalty = row["method"].partition("--learn-penalty ")[2] or "1"
            distilled = ", distilled" if "distilled" in row["method"] else ""
            label = f"sparse-vd {row['epochs']} epochs (penalty {penalty}), cut + retrained{distilled}"
            series.setdefault(label, []).append((row["compression"], row["test_error_after"]))
    return {label: sorted(points) for label, points in series.items()}


def network(results: Path, net: str) -> dict:
    """Everything drawn for one network."""
    published = PUBLISHED.get(net)
    curves = {**sweep_curves(results, net), **figure5_curves(results, net), **learned_curves(results, net)}
    points = [{"label": label, "compression": c, "error": e}
              for label, c, e in (*search_points(results, net), *learned_points(results, net))]
    return {"published": [vars(p) for p in published.points], "published_dense_error": published.dense_error,
            "secateur_points": points, "secateur_curves": {k: [list(p) for p in v] for k, v in curves.items()}}


def draw(net: str, entry: Mapping[str, Any]) -> bytes:
    """The Pareto plot of one network as PNG bytes."""
    series = {f"secateur: {k}": [tuple(p) for p in v] for k, v in entry["secateur_curves"].items()}
    for p in entry["secateur_points"]:  # two runs with one label (e.g. the same phase twice) both drawn
        label = f"secateur: {p['label']}"
        while label in series:
            label += " (again)"
        series[label] = [(p["compression"], p["error"])]
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
    names = ["han_table.json", "han_table_rerun.json", "han_table_wall.json", "channels.json", "granularities.json",
             "figure5.json", *(f"sweep_{n}.json" for n in NETS)]
    missing = [n for n in names if not (args.results / n).is_file()]
    entries = {net: network(args.results, net) for net in args.nets.split(",")}
    for net, entry in entries.items():
        (args.results / f"pareto_{net}.png").write_bytes(draw(net, entry))
    (args.results / "pareto.json").write_text(json.dumps(entries, indent=1))
    (args.results / "pareto.md").write_text(markdown(entries, missing) + "\n")
    print(markdown(entries, missing))


if __name__ == "__main__":
    main()
