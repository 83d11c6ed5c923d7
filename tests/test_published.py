"""Han's Figure 5 and the Pareto plots: the figure functions, the published results and the report's use of them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from secateur.report import render_report
from secateur.report.figures import accuracy_loss_figure, pareto_figure, png_bytes
from secateur.report.published import PUBLISHED, lenet5_params, published_for
from test_report import RESULTS, _write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_accuracy_loss_figure_draws_every_curve_and_pins_disasters_to_the_floor():
    curves = {"L2 w/o retrain": [(50, -0.1), (90, -3.0), (97, -60.0)], "L2 iterative": [(50, 0.05), (97, -0.4)]}
    fig = accuracy_loss_figure(curves, title="t", floor=-4.5)
    ax = fig.axes[0]
    assert {line.get_label() for line in ax.get_lines()} >= set(curves)
    assert min(y for line in ax.get_lines() for y in line.get_ydata()) >= -4.5  # -60 sits on the floor
    assert any(text.get_text() == "-60.0" for text in ax.texts)
    assert png_bytes(fig).startswith(PNG_MAGIC)


def test_pareto_figure_has_a_log_axis_curves_and_labelled_published_points():
    fig = pareto_figure({"han": [(3.0, 1.0), (12.0, 1.2)]}, [("Han 2015", 12, 1.59), ("Sparse VD", 68, 1.92)],
                        title="t", dense={"dense": 1.64})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and {t.get_text() for t in ax.texts} == {"Han 2015", "Sparse VD"}
    assert png_bytes(fig).startswith(PNG_MAGIC)


def test_published_results_hold_the_issue_table_and_structured_compressions():
    assert lenet5_params(20, 50, 800, 500) == 431_080
    lenet5 = {p.method: p for p in PUBLISHED.get("lenet5").points}
    assert (lenet5["Sparse VD 2017"].compression, lenet5["Sparse VD 2017"].error) == (280, 0.75)
    assert lenet5["L0-sep 2018"].kind == "structure" and lenet5["L0-sep 2018"].compression == pytest.approx(69.4, 0.01)
    assert {p.method for p in PUBLISHED.get("lenet300").points} == {
        "Han 2015", "DNS 2016", "Soft weight sharing 2017", "Sparse VD 2017"}
    assert published_for(RESULTS) is PUBLISHED.get("lenet300")
    assert published_for({**RESULTS, "dataset": "fashion-mnist"}) is None
    assert published_for({**RESULTS, "model": {"name": "vgg-mnist"}}) is None


def test_the_run_report_puts_a_published_model_beside_its_published_points(tmp_path):
    out = render_report(_write_run(tmp_path / "run"))
    markdown = out["md"].read_text()
    assert "Beside published results" in markdown and "Sparse VD 2017" in markdown and "12.7x" in markdown
    other = render_report(_write_run(tmp_path / "other", {**RESULTS, "model": {"name": "vgg-mnist"}}))
    assert "pareto" not in other and "Beside published" not in other["md"].read_text()


def test_bench_figures_from_tiny_result_files(tmp_path):
    figure5, pareto = bench_module("figure5"), bench_module("pareto")
    point = {"fraction": 0.9, "pruned_pct": 89.9, "compression": 9.9, "test_change": -0.3, "test_accuracy": 0.98}
    entry = {"curves": [{"key": key, "label": label, "settings": {"retrain_epochs": int(retrained)},
                         "points": [point]} for key, label, _, _, retrained in figure5.CURVES]}
    assert figure5.figure("lenet300", entry, "1 epoch").startswith(PNG_MAGIC)
    assert figure5.strength_of(0.75) == pytest.approx(2.0)
    (tmp_path / "figure5.json").write_text(json.dumps({"method": "global-magnitude", "nets": {"lenet5": entry}}))
    def row(method: str, compression: float, error: float, **extra) -> dict:
        return {"network": "lenet5", "method": method, "epochs": 50, "compression": compression,
                "test_error_after": error, **extra}
    rows = {"lenet5/paper": row("sparse-vd (log alpha > 3, no retraining)", 150, 1.2),
            "lenet5/retrain-280x": row("sparse-vd (280x ..., retrained)", 280, 1.1),
            "lenet5/retrain-100x": row("sparse-vd (100x ..., retrained)", 100, 0.8),
            "lenet5/bound": row("secateur prune --method sparse-vd", 3, 0.6, partial=True),  # stopped early
            "lenet300/paper": {**row("sparse-vd", 40, 1.3), "network": "lenet300"}}
    (tmp_path / "learned.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "learned_other.json").write_text(json.dumps([1, 2]))  # not a learned.py file: skipped
    found = pareto.network(tmp_path, "lenet5")
    assert len(found["secateur_curves"]) == 2  # Figure 5's iterative curve + the retrained cuts; no other file
    assert [[100, 0.8], [280, 1.1]] in found["secateur_curves"].values()  # sorted by compression
    assert [(p["compression"], p["error"]) for p in found["secateur_points"]] == [(150, 1.2)]  # no partial row
    assert pareto.draw("lenet5", found).startswith(PNG_MAGIC)
