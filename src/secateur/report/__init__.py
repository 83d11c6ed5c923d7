"""Markdown / HTML reports and plots from a run directory (schema: docs/RUNDIR.md).

The report is first built as a list of small *blocks* (heading, key-value list, table,
paragraph, figure); the markdown and the HTML are two renderers of the same blocks, so both
always show the same numbers. Figures are drawn on :class:`matplotlib.figure.Figure` directly
(Agg, no pyplot, no global state) and embedded in the HTML as base64 data URIs, so
``report.html`` is a single self-contained file. Every file is written atomically.

Modules: :mod:`~secateur.report.blocks` (block types, cell formatting),
:mod:`~secateur.report.render` (markdown and HTML, the report writer),
:mod:`~secateur.report.figures` (trade-off, per-layer and sensitivity plots),
:mod:`~secateur.report.run` (a run's report) and :mod:`~secateur.report.sweep` (a sweep's).
"""

from __future__ import annotations

from secateur.report.figures import layers_figure, sensitivity_figure, tradeoff_figure
from secateur.report.render import to_html, to_markdown
from secateur.report.run import load_run, render_report, results_markdown
from secateur.report.sweep import sweep_report

__all__ = [
    "layers_figure", "load_run", "render_report", "results_markdown", "sensitivity_figure", "sweep_report",
    "to_html", "to_markdown", "tradeoff_figure",
]
