"""Reports from a fake run directory (docs/RUNDIR.md schema): files, numbers, plots, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secateur.errors import CheckpointError
from secateur.io import rundir
from secateur.report import (
    layers_figure,
    render_report,
    results_markdown,
    sensitivity_figure,
    sweep_report,
    tradeoff_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE_PARAMS = 266_610

LAYERS = [
    {"name": "fc1.weight", "kind": "Linear", "shape": [300, 784], "weights": 235_200, "nonzero": 18_816,
     "kept": 0.08, "macs": 235_200, "macs_nonzero": 18_816},
    {"name": "fc2.weight", "kind": "Linear", "shape": [100, 300], "weights": 30_000, "nonzero": 1_500,
     "kept": 0.05, "macs": 30_000, "macs_nonzero": 1_500},
    {"name": "fc3.weight", "kind": "Linear", "shape": [10, 100], "weights": 1_000, "nonzero": 274,
     "kept": 0.274, "macs": 1_000, "macs_nonzero": 274},
]


def _round(n: int, strength: float, val: float, feasible: bool, nonzero: int) -> dict:
    return {"round": n, "strength": strength, "level": {"fc1.weight": strength}, "val_accuracy": val,
            "drop": round(100 * (0.984 - val), 4), "feasible": feasible,
            "params_nonzero": nonzero, "compression": round(BASE_PARAMS / nonzero, 1),
            "macs_nonzero": nonzero - 410, "seconds": 11.2, "layers": {}}


HISTORY = [_round(1, 1.0, 0.9842, True, 60_000), _round(2, 1.5, 0.9839, True, 35_000),
           _round(3, 2.2, 0.9790, False, 15_000), _round(4, 1.85, 0.9838, True, 21_000)]

RESULTS = {
    "kind": "unstructured", "method": "han", "schedule": "iterative", "granularity": "weight", "max_drop": 0.1,
    "model": {"name": "lenet300", "args": {}}, "dataset": "mnist",
    "baseline": {"val": {"accuracy": 0.984}, "test": {"accuracy": 0.9857}},
    "pruned": {"val": {"accuracy": 0.9838}, "test": {"accuracy": 0.9851}},
    "drop": {"val": 0.02, "test": 0.06},
    "params": {"baseline": BASE_PARAMS, "total": BASE_PARAMS, "nonzero": 21_000},
    "compression": 12.7,
    "macs": {"baseline": 266_200, "dense": 266_200, "nonzero": 20_590},
    "bytes": {"baseline": 1_066_440, "pruned": 1_333_416, "compact": 80_000},
    "seconds": 123.4, "rounds": 4, "chosen_round": 4, "layers": LAYERS,
}


def _write_run(run: Path, results: dict = RESULTS, history: list = HISTORY) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / rundir.RESULTS).write_text(json.dumps(results))
    (run / rundir.HISTORY).write_text("".join(json.dumps(h) + "\n" for h in history))
    return run


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_render_report_writes_self_contained_files(tmp_path: Path) -> None:
    out = render_report(_write_run(tmp_path / "run"))
    assert set(out) == {"md", "html", "tradeoff", "layers", "pareto"}  # pareto: lenet300 on mnist is published
    assert _is_png(out["tradeoff"]) and _is_png(out["layers"]) and _is_png(out["pareto"])
    page = out["html"].read_text()
    assert page.count("data:image/png;base64,") == 3
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "12.7x" in page and "chosen" in page
    assert not list((tmp_path / "run").glob(".*.tmp"))  # atomic writes leave no temp files


def test_markdown_holds_before_after_and_per_layer_numbers(tmp_path: Path) -> None:
    md = render_report(_write_run(tmp_path / "run"))["md"].read_text()
    lines = md.splitlines()
    assert "| compression | 1.0x | 12.7x | — |" in lines
    compact = [line for line in lines if line.startswith("| model.compact (bytes on disk")]
    assert len(compact) == 1 and "80,000" in compact[0] and "-92.50%" in compact[0]
    assert "| accuracy (val) | 98.40% | 98.38% | -0.02 pts |" in lines
    assert "| accuracy (test) | 98.57% | 98.51% | -0.06 pts |" in lines
    assert "| parameters (nonzero) | 266,610 | 21,000 | -92.12% |" in lines
    assert "| fc1.weight | 235,200 | 18,816 | 235,200 | 8.00% | 8.00% |" in lines
    assert "| fc2.weight | 30,000 | 1,500 | 30,000 | 5.00% | 5.00% |" in lines
    assert "| fc3.weight | 1,000 | 274 | 1,000 | 27.40% | 27.40% |" in lines
    # Total = sums over layers: 20,590 / 266,200 kept
    assert "| Total | 266,200 | 20,590 | 266,200 | 7.73% | 7.73% |" in lines
    assert any(line.startswith("| 4 |") and line.endswith("| **chosen** |") for line in lines)
    assert any(line.startswith("| 3 |") and line.split("|")[6].strip() == "no" for line in lines)  # not feasible
    assert "- **max drop**: 0.10 pts (validation accuracy)" in lines
    assert "- **wall time**: 2 min 03 s" in lines
    assert "test accuracy is reported for the baseline and the final model only" in md
    assert "![" in md and "(tradeoff.png)" in md and "(layers.png)" in md


def test_render_is_idempotent(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    first = {k: p.read_bytes() for k, p in render_report(run).items()}
    second = {k: p.read_bytes() for k, p in render_report(run).items()}
    assert first == second


def test_structured_run_shows_channels_and_latency(tmp_path: Path) -> None:
    results = dict(RESULTS, kind="structured", granularity="channel",
                   channels={"conv1": {"before": 20, "after": 12}},
                   latency={"b1_before": 0.002, "b1_after": 0.001, "b32_before": 0.01, "b32_after": 0.004})
    md = results_markdown(results, HISTORY)
    assert "## Kept channels" in md and "| conv1 | 20 | 12 | 60.00% |" in md
    assert "| latency (batch 1) | 2.000 ms | 1.000 ms | -50.00% |" in md
    assert "| latency (batch 32) | 10.000 ms | 4.000 ms | -60.00% |" in md
    assert "Kept channels" not in results_markdown(RESULTS, HISTORY)


def test_sensitivity_plot_when_present(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    sens = {"method": "han", "baseline_val": 0.984, "chosen": {"fc1.weight": 2.0},
            "layers": {name: [{"level": lv, "kept": 0.5, "val_accuracy": 0.984 - 0.002 * lv * (i + 1)}
                              for lv in (0.5, 1.0, 2.0, 3.0)] for i, name in enumerate(["fc1.weight", "fc2.weight"])}}
    (run / rundir.SENSITIVITY).write_text(json.dumps(sens))
    out = render_report(run)
    assert _is_png(out["sensitivity"])
    assert out["html"].read_text().count("data:image/png;base64,") == 4  # tradeoff, layers, pareto, sensitivity
    assert len(sensitivity_figure(sens).axes[0].get_lines()) >= 2


def test_tradeoff_figure_marks_bound_and_chosen() -> None:
    fig = tradeoff_figure(HISTORY, 0.1, chosen=4, params_baseline=BASE_PARAMS)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    chosen = [t for t in texts if t.startswith("chosen")]
    assert chosen and "round 4" in chosen[0] and "12.7x" in chosen[0] and "92.1% saved" in chosen[0]
    assert any(abs(line.get_ydata()[0] - 0.1) < 1e-9 for line in ax.get_lines())  # the bound line
    labels = ax.get_legend_handles_labels()[1]
    assert "feasible round" in labels and "infeasible round (rolled back)" in labels


def test_tradeoff_clips_outliers_but_keeps_their_value() -> None:
    history = [*HISTORY, _round(5, 4.0, 0.50, False, 3_000)]  # a 48.40-point disaster
    ax = tradeoff_figure(history, 0.1, chosen=4, params_baseline=BASE_PARAMS).axes[0]
    assert ax.get_ylim()[1] < 5
    assert "48.4" in [t.get_text() for t in ax.texts]


def test_layers_figure_has_one_bar_per_layer() -> None:
    ax = layers_figure(LAYERS).axes[0]
    widths = sorted(round(p.get_width(), 2) for p in ax.patches)
    assert widths == [5.0, 8.0, 27.4, 100.0, 100.0, 100.0]


def test_missing_results_is_one_line_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError) as info:
        render_report(tmp_path / "run")
    assert rundir.RESULTS in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        render_report(tmp_path / "nowhere")


def test_broken_files_are_checkpoint_errors(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    (run / rundir.HISTORY).write_text(json.dumps(HISTORY[0]) + "\n{oops\n")
    with pytest.raises(CheckpointError, match=r"history.jsonl"):
        render_report(run)
    _write_run(run, {k: v for k, v in RESULTS.items() if k != "layers"})
    with pytest.raises(CheckpointError, match="lacks layers"):
        render_report(run)


def _pt(s: float, drop: float, c: float) -> dict:
    """A sweep point as secateur.analysis.sweep writes it (per-layer level dict, no test accuracy)."""
    return {"strength": s, "level": {"fc1.weight": s, "fc2.weight": s}, "val_accuracy": 0.984 - drop / 100,
            "drop": drop, "compression": c, "params_nonzero": int(BASE_PARAMS / c)}


SWEEP = {"model": {"name": "lenet300", "args": {}}, "dataset": "mnist", "schedule": "iterative",
         "baseline": {"val": {"accuracy": 0.984}},
         "methods": {"han": [_pt(1.0, 0.0, 4.0), _pt(2.0, 0.05, 12.0), _pt(3.0, 0.8, 30.0)],
                     "random": [_pt(0.5, 0.02, 2.0), _pt(1.0, 3.0, 5.0)]}}


def test_sweep_report_two_methods(tmp_path: Path) -> None:
    path = tmp_path / rundir.SWEEP
    path.write_text(json.dumps(SWEEP))
    out = sweep_report(path, tmp_path / "out")
    assert set(out) == {"md", "html", "png"} and _is_png(out["png"])
    md = out["md"].read_text()
    assert "## Method: han" in md and "## Method: random" in md
    assert md.index("## Method: han") < md.index("| 3 | per layer | 97.60% | 0.80 pts | 30.0x | 96.67% | 8,887 |") \
        < md.index("## Method: random") < md.index("| 1 | per layer | 95.40% | 3.00 pts | 5.0x | 80.00% | 53,322 |")
    assert "within bound" not in md and "test accuracy |" not in md  # neither is known
    page = out["html"].read_text()
    assert page.count("data:image/png;base64,") == 1 and 'src="http' not in page
    ax = tradeoff_figure([], None, series=SWEEP["methods"], x_axis="compression", y_scale="symlog").axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "symlog"
    assert {"han", "random"} <= set(ax.get_legend_handles_labels()[1])
    assert ax.get_ylim()[1] > 3.0  # nothing clipped on the sweep plot


def test_sweep_with_bound_picks_best_per_method(tmp_path: Path) -> None:
    path = tmp_path / rundir.SWEEP
    path.write_text(json.dumps(dict(SWEEP, max_drop=0.1)))
    md = sweep_report(path, tmp_path)["md"].read_text()
    assert "| han | 12.0x | 0.05 pts | 98.35% | 22,217 |" in md  # 30x breaks the 0.1-pt bound
    assert "| random | 2.0x | 0.02 pts | 98.38% | 133,305 |" in md
    assert "| 30.0x | 96.67% | 8,887 | no |" in md and "| 12.0x | 91.67% | 22,217 | yes |" in md


def test_render_report_includes_sweep_when_present(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    (run / rundir.SWEEP).write_text(json.dumps(SWEEP))
    out = render_report(run)
    assert _is_png(out["sweep_png"]) and out["sweep_md"] == rundir.report_paths(run, rundir.SWEEP_REPORT)["md"]
