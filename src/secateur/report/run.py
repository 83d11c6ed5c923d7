"""The report of one run folder: ``report.md``, ``report.html`` and the plots beside them.

The report is built as blocks (:mod:`secateur.report.blocks`) from ``results.json`` and
``history.jsonl`` (schema: docs/RUNDIR.md): the run's header, a before / after table, the
per-layer table in the form of Han et al. (2015), Table 2, the kept channels of structured
runs, every round of the search, and the plots. A sensitivity analysis or a sweep saved in
the same folder is drawn too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secateur.io import rundir
from secateur.report.blocks import (
    DASH,
    Block,
    Heading,
    Image,
    Meta,
    Para,
    Table,
    accuracy,
    fmt_bytes,
    fmt_count,
    fmt_duration,
    fmt_ms,
    fmt_pct,
    fmt_pts,
    fmt_ratio,
    fmt_times,
    layer_kept,
    model_name,
    share,
)
from secateur.report.figures import layers_figure, pareto_figure, png_bytes, sensitivity_figure, tradeoff_figure
from secateur.report.published import Published, published_for
from secateur.report.render import to_markdown, write_report
from secateur.report.sweep import sweep_report

NOTE = ("All decisions (pruning levels, rollbacks, the chosen model) were made on the validation "
        "split; test accuracy is reported for the baseline and the final model only, and was "
        "never used to choose anything.")


def load_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """Read and check ``results.json`` and ``history.jsonl`` (may be absent: no rounds) of a run."""
    run = Path(run_dir)
    return rundir.read_results(run), rundir.read_history(run)


# ----------------------------------------------------------------------------- tables


def _header(results: Mapping[str, Any]) -> Meta:
    """Model, dataset, method, schedule, bound, wall time, rounds."""
    method = f"{results.get('method', DASH)} / {results.get('granularity', DASH)}"
    chosen = results.get("chosen_round")
    rounds = f"{results.get('rounds', DASH)}" + (f" (chosen: round {chosen})" if chosen is not None else
                                                  " (no feasible round: baseline kept)")
    rows = [("model", model_name(results.get("model"))), ("dataset", str(results.get("dataset", DASH))),
            ("method / granularity", f"{method} ({results.get('kind', 'unstructured')})"),
            ("schedule", str(results.get("schedule", DASH))),
            ("max drop", fmt_pts(results.get("max_drop")) + " (validation accuracy)")]
    if "acceptance" in results:  # runs from before the noise-aware rule have neither
        rows += [("acceptance", _acceptance(results["acceptance"])), ("polish", _polish(results.get("polish")))]
    if "reference" in results:  # runs from before the dense control and certification have neither
        rows += [("drops measured against", _reference(results["reference"])),
                 ("certification", _certification(results.get("certification")))]
    if results.get("ramp"):
        rows.append(("final ramp", _ramp(results["ramp"])))
    return Meta((*rows, ("wall time", fmt_duration(results.get("seconds"))), ("rounds", rounds)))


def _acceptance(acceptance: Mapping[str, Any] | None) -> str:
    """The rule rounds were judged by (see secateur.search.acceptance)."""
    if not acceptance:
        return DASH
    if not acceptance.get("paired") or not acceptance.get("confidence"):
        return "drop <= max drop (plain rule)"
    return f"drop + {acceptance['confidence']:g} paired standard errors <= max drop"


def _reference(reference: Mapping[str, Any] | None) -> str:
    """Which model the drops are against, and the dense control's verdict (or that none ran)."""
    if not reference:
        return DASH
    return f"the {reference.get('used', 'baseline')} ({reference.get('note', '')})"


def _certification(certification: Mapping[str, Any] | None) -> str:
    """The certified bound's verdict, or that the run was not certified."""
    if not certification:
        return "none (the drops are on the images the search chose on)"
    return (f"{certification['images']} held-out images, {certification['bound']}: "
            f"{certification.get('message', DASH)}")


def _certification_table(certification: Mapping[str, Any]) -> Table:
    """Each candidate tried, in order, with its paired bound on the held-out images."""
    level = f"{100 * certification['level']:g}% upper bound"
    rows = [(str(row["round"]) + (" (polished)" if row.get("polished") else ""), fmt_times(row.get("compression")),
             fmt_pts(row.get("drop")), fmt_pts(row.get("ucb")),
             f"{row.get('only_reference')} / {row.get('only_candidate')}",
             "yes" if row.get("certified") else "no") for row in certification.get("candidates", [])]
    return Table(("round", "compression", "drop", level, "only reference / only candidate right", "certified"),
                 tuple(rows), ("l", "r", "r", "r", "r", "l"))


def _polish(polish: Mapping[str, Any] | None) -> str:
    """Whether the final retraining ran and was kept."""
    if not polish:
        return "none"
    verdict = "kept" if polish.get("kept") else "not kept (validation accuracy went down)"
    return (f"{polish.get('epochs')} epochs, val accuracy {fmt_pct(polish.get('val_accuracy_before'))} -> "
            f"{fmt_pct(polish.get('val_accuracy_after'))}: {verdict}")


def _ramp(ramp: Mapping[str, Any]) -> str:
    """What the final smooth ramp reached, and whether it replaced the chosen model."""
    verdict = "kept" if ramp.get("kept") else "not kept (over the bound, or worse than the chosen model)"
    return (f"{ramp.get('epochs')} epochs from the dense model, val accuracy {fmt_pct(ramp.get('val_accuracy_before'))}"
            f" -> {fmt_pct(ramp.get('val_accuracy_after'))}, nonzero {ramp.get('params_nonzero_before')} -> "
            f"{ramp.get('params_nonzero_after')}: {verdict}")


def _before_after(results: Mapping[str, Any]) -> Table:
    """Baseline vs pruned: accuracy, parameters, compression, MACs, bytes, latency."""
    base, pruned, drop = results["baseline"], results["pruned"], results.get("drop") or {}
    params, macs, size = results["params"], results.get("macs") or {}, results.get("bytes") or {}
    rows = [(f"accuracy ({s})", fmt_pct(accuracy(base, s)), fmt_pct(accuracy(pruned, s)),
             DASH if drop.get(s) is None else f"{-drop[s]:+.2f} pts") for s in ("val", "test")]
    control = (results.get("reference") or {}).get("control")
    if control:
        rows += [(f"dense control accuracy ({s})", fmt_pct(accuracy(control, s)), DASH, DASH) for s in ("val", "test")]
    if drop.get("certified_ucb") is not None:
        rows.append(("certified drop (held-out images)", DASH, DASH,
                     f"{drop['certified']:+.2f} pts, upper bound {drop['certified_ucb']:+.2f}"))
    rows += [("parameters (total)", fmt_count(params.get("baseline")), fmt_count(params.get("total")),
              fmt_ratio(params.get("total"), params.get("baseline"))),
             ("parameters (nonzero)", fmt_count(params.get("baseline")), fmt_count(params.get("nonzero")),
              fmt_ratio(params.get("nonzero"), params.get("baseline"))),
             ("compression", fmt_times(1.0), fmt_times(results["compression"]), DASH),
             ("MACs (dense)", fmt_count(macs.get("baseline")), fmt_count(macs.get("dense")),
              fmt_ratio(macs.get("dense"), macs.get("baseline"))),
             ("MACs (nonzero)", fmt_count(macs.get("baseline")), fmt_count(macs.get("nonzero")),
              fmt_ratio(macs.get("nonzero"), macs.get("baseline"))),
             (f"{rundir.WEIGHTS} (bytes on disk)", fmt_bytes(size.get("baseline")), fmt_bytes(size.get("pruned")),
              fmt_ratio(size.get("pruned"), size.get("baseline")))]
    if size.get("compact") is not None:
        label = f"{rundir.COMPACT} (bytes on disk, vs the baseline's {rundir.WEIGHTS})"
        rows.append((label, fmt_bytes(size.get("baseline")), fmt_bytes(size["compact"]),
                     fmt_ratio(size["compact"], size.get("baseline"))))
    latency = results.get("latency") or {}
    for batch in sorted({k.split("_")[0] for k in latency}, key=lambda b: int(b[1:]) if b[1:].isdigit() else 0):
        before, after = latency.get(f"{batch}_before"), latency.get(f"{batch}_after")
        rows.append((f"latency (batch {batch[1:]})", fmt_ms(before), fmt_ms(after), fmt_ratio(after, before)))
    used = (results.get("reference") or {}).get("used", "baseline")
    return Table(("", "baseline", "pruned", f"change (vs the {used})"), tuple(rows), ("l", "r", "r", "r"))


def _exports_table(exports: Mapping[str, Mapping[str, Any]]) -> Table:
    """The run's exports: file, real bytes, and where measured, PyTorch vs the runtime's latency."""
    rows = []
    for name, done in exports.items():
        latency = done.get("latency") or {}
        times = [(latency.get(b) or {}) for b in ("b1", "b32")]
        rows.append((f"{done.get('file', name)} ({name})", fmt_bytes(done.get("bytes")),
                     *(value for t in times for value in (fmt_ms(t.get("torch")), fmt_ms(t.get("onnxruntime")))),
                     DASH if done.get("max_abs_diff") is None else f"{done['max_abs_diff']:.1e}"))
    return Table(("export", "bytes on disk", "PyTorch b1", "runtime b1", "PyTorch b32", "runtime b32", "max |diff|"),
                 tuple(rows), ("l", "r", "r", "r", "r", "r", "r"))


def _layers_table(layers: Sequence[Mapping[str, Any]]) -> Table:
    """Han et al. (2015) Table 2 form: weights, MACs, % weights kept, % MACs kept, plus Total."""
    rows = [(str(layer.get("name", DASH)), fmt_count(layer.get("weights")), fmt_count(layer.get("nonzero")),
             fmt_count(layer.get("macs")), fmt_pct(layer_kept(layer)),
             fmt_pct(share(layer.get("macs_nonzero"), layer.get("macs")))) for layer in layers]

    def total(key: str) -> float | None:
        values = [layer.get(key) for layer in layers]
        present = [value for value in values if value is not None]
        return sum(present) if values and len(present) == len(values) else None

    rows.append(("Total", fmt_count(total("weights")), fmt_count(total("nonzero")), fmt_count(total("macs")),
                 fmt_pct(share(total("nonzero"), total("weights"))),
                 fmt_pct(share(total("macs_nonzero"), total("macs")))))
    return Table(("layer", "weights", "nonzero", "MACs (dense)", "weights kept", "MACs kept"),
                 tuple(rows), ("l", "r", "r", "r", "r", "r"))


def _channels_table(channels: Mapping[str, Mapping[str, Any]]) -> Table:
    """Structured runs: channels (or neurons) per layer before and after surgery."""
    rows = [(name, fmt_count(c.get("before")), fmt_count(c.get("after")),
             fmt_pct(share(c.get("after"), c.get("before")))) for name, c in channels.items()]
    return Table(("layer", "before", "after", "kept"), tuple(rows), ("l", "r", "r", "r"))


def _unfollowed_table(unfollowed: Sequence[Mapping[str, Any]]) -> Table:
    """Structured runs: ops whose channels were all kept, because the analysis cannot follow them."""
    rows = [(str(u.get("op", DASH)), str(u.get("path", DASH)), fmt_count(u.get("channels"))) for u in unfollowed]
    return Table(("op", "module", "channels kept"), tuple(rows), ("l", "l", "r"))


def _rounds_table(history: Sequence[Mapping[str, Any]], chosen: int | None) -> Table:
    """Every round of the search, the chosen one marked."""
    def yes(v: Any) -> str:
        return DASH if v is None else ("yes" if v else "no")

    rows = [(str(h.get("round", DASH)), DASH if h.get("strength") is None else f"{h['strength']:.3g}",
             fmt_pct(h.get("val_accuracy")), fmt_pts(h.get("drop")), fmt_pts(h.get("margin")), yes(h.get("feasible")),
             fmt_count(h.get("params_nonzero")), fmt_times(h.get("compression")), fmt_duration(h.get("seconds")),
             "**chosen**" if chosen is not None and h.get("round") == chosen else "") for h in history]
    return Table(("round", "strength", "val accuracy", "drop", "margin", "feasible", "nonzero params",
                  "compression", "time", ""), tuple(rows), ("r", "r", "r", "r", "r", "l", "r", "r", "r", "l"))


def _run_point(results: Mapping[str, Any]) -> tuple[float, float] | None:
    """This run's (compression, test error %), when its test accuracy was measured."""
    test = accuracy(results.get("pruned"), "test")
    return None if test is None else (float(results["compression"]), 100 * (1 - test))


def _published_table(results: Mapping[str, Any], published: Published) -> Table:
    """This run beside the published (compression, test error) results for its model."""
    point = _run_point(results)
    rows = [("this run", fmt_times(point[0]) if point else DASH, f"{point[1]:.2f}%" if point else DASH)]
    rows += [(p.method + (f" ({p.architecture}, structure)" if p.architecture else ""), fmt_times(p.compression),
              f"{p.error:.2f}%") for p in published.points]
    return Table(("", "compression", "test error"), tuple(rows), ("l", "r", "r"))


def _published_figure(results: Mapping[str, Any], published: Published) -> bytes:
    """The Pareto plot of this run's point beside the published ones."""
    point = _run_point(results)
    base = accuracy(results.get("baseline"), "test")
    dense = {f"published dense ({published.dense_error:.2f}%)": published.dense_error}
    if base is not None:
        dense[f"this baseline ({100 * (1 - base):.2f}%)"] = 100 * (1 - base)
    fig = pareto_figure({"this run": [point]} if point else {},
                        [(p.method, p.compression, p.error) for p in published.points if p.kind != "structure"],
                        title="This run beside published results", dense=dense,
                        structure=[(f"{p.method} {p.architecture}", p.compression, p.error)
                                   for p in published.points if p.kind == "structure"])
    return png_bytes(fig)


def _report_blocks(results: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                   figures: Sequence[tuple[str, str]]) -> list[Block]:
    """The whole report as blocks, shared by the markdown and HTML renderers."""
    title = f"secateur report: {model_name(results.get('model')).split(' (')[0]} on {results.get('dataset', DASH)}"
    blocks: list[Block] = [Heading(title, 1), _header(results), Heading("Before / after"),
                           _before_after(results), Heading("Per layer (Han et al. 2015, Table 2 form)"),
                           _layers_table(results["layers"])]
    if results.get("channels"):
        blocks += [Heading("Kept channels"), _channels_table(results["channels"])]
    if results.get("unfollowed"):
        blocks += [Heading("Channels kept at ops the analysis does not follow"),
                   _unfollowed_table(results["unfollowed"])]
    if results.get("certification"):
        blocks += [Heading("Certification (held-out validation images, used once)"),
                   _certification_table(results["certification"])]
    if results.get("exports"):
        blocks += [Heading("Exports (one thread each side)"), _exports_table(results["exports"])]
    blocks += [Heading("Rounds"), _rounds_table(history, results.get("chosen_round"))]
    published = published_for(results)
    if published is not None:
        blocks += [Heading("Beside published results"), Para(f"Test error and compression as published ("
                                                              f"{published.source})."),
                   _published_table(results, published)]
    if figures:
        blocks += [Heading("Plots")] + [Image(caption, name) for caption, name in figures]
    return [*blocks, Heading("Note on evaluation"), Para(NOTE)]


def results_markdown(results: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                     figures: Sequence[tuple[str, str]] = ()) -> str:
    """The run report as markdown; ``figures`` are ``(caption, png file name)`` pairs to link."""
    return to_markdown(_report_blocks(results, history, figures))


# ----------------------------------------------------------------------------- entry point


def _figures(results: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
             sensitivity: Mapping[str, Any] | None) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """The run's plots as ``{png file name: bytes}`` and their ``(caption, file name)`` in report order."""
    tradeoff = tradeoff_figure(history, results.get("max_drop"), results.get("chosen_round"),
                               params_baseline=results["params"].get("baseline"))
    pngs = {rundir.TRADEOFF_PNG: png_bytes(tradeoff), rundir.LAYERS_PNG: png_bytes(layers_figure(results["layers"]))}
    figures = [("Trade-off: every round; size saved vs validation accuracy drop", rundir.TRADEOFF_PNG),
               ("Per-layer share of weights kept", rundir.LAYERS_PNG)]
    published = published_for(results)
    if published is not None:
        pngs[rundir.PARETO_PNG] = _published_figure(results, published)
        figures.append(("This run beside published results: test error vs compression", rundir.PARETO_PNG))
    if sensitivity is not None:
        pngs[rundir.SENSITIVITY_PNG] = png_bytes(sensitivity_figure(sensitivity))
        figures.append(("Per-layer sensitivity: validation accuracy vs pruning level", rundir.SENSITIVITY_PNG))
    return pngs, figures


def render_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots of a run directory; return their paths.

    Keys: ``md``, ``html``, ``tradeoff``, ``layers`` and, when the inputs exist,
    ``sensitivity`` and ``sweep_md`` / ``sweep_html`` / ``sweep_png``. Idempotent.
    """
    run = Path(run_dir)
    results, history = load_run(run)
    pngs, figures = _figures(results, history, rundir.read_sensitivity(run))
    out = write_report(run, rundir.REPORT, _report_blocks(results, history, figures), pngs)
    if (run / rundir.SWEEP).is_file():
        out.update({f"sweep_{k}": v for k, v in sweep_report(run / rundir.SWEEP, run).items()})
    return out
