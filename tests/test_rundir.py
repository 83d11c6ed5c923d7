"""The run folder's names and paths (pinned to docs/RUNDIR.md) and its resumable rounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from secateur.errors import CheckpointError
from secateur.io import rundir

DOCS = Path(__file__).resolve().parents[1] / "docs" / "RUNDIR.md"


def test_file_names_are_the_documented_ones() -> None:
    names = {rundir.CONFIG: "config.yaml", rundir.HISTORY: "history.jsonl", rundir.STATE: "state.json",
             rundir.STATE_DIR: "state", rundir.RESULTS: "results.json", rundir.BASELINE: "baseline",
             rundir.WEIGHTS: "model.safetensors", rundir.MODEL_META: "model.json",
             rundir.SENSITIVITY: "sensitivity.json", rundir.SENSITIVITY_PNG: "sensitivity.png",
             rundir.SWEEP: "sweep.json", rundir.TRADEOFF_PNG: "tradeoff.png", rundir.LAYERS_PNG: "layers.png"}
    assert all(got == want for got, want in names.items()), names
    docs = DOCS.read_text()
    assert all(f"`{name}" in docs for name in names.values())


def test_path_functions(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert rundir.baseline_dir(out) == out / "baseline"
    assert rundir.model_base(out) == out / "model"
    assert rundir.report_paths(out) == {"md": out / "report.md", "html": out / "report.html"}
    assert rundir.report_paths(out, rundir.SWEEP_REPORT) == {"md": out / "sweep.md", "html": out / "sweep.html"}
    out.mkdir()
    assert rundir.checkpoint_base(out) == out / "model"
    assert rundir.checkpoint_base(out / "model.safetensors") == out / "model"
    assert not rundir.has_checkpoint(out)
    (out / "model.safetensors").write_bytes(b"")
    assert rundir.has_checkpoint(out)


def test_save_round_keeps_only_the_last_round(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    for n in (1, 2):
        rundir.save_round(tmp_path, model, {"round": n, "best_strength": float(n)}, {"plan": {"n": n}})
    assert sorted(p.name for p in (tmp_path / rundir.STATE_DIR).iterdir()) == ["round-2.json", "round-2.safetensors"]
    loaded, state, header = rundir.load_round(tmp_path, nn.Linear(3, 2))
    assert state == {"round": 2, "best_strength": 2.0} and header["plan"] == {"n": 2}
    torch.testing.assert_close(loaded.weight, model.weight, rtol=0, atol=0)


def test_read_results_needs_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        rundir.read_results(tmp_path / "nowhere")
    rundir.write_results(tmp_path, {"baseline": {}, "pruned": {}})
    with pytest.raises(CheckpointError, match="lacks params, compression, layers: the run did not finish"):
        rundir.read_results(tmp_path)
    assert rundir.read_sensitivity(tmp_path) is None
    rundir.write_sensitivity(tmp_path, {"layers": {}})
    assert rundir.read_sensitivity(tmp_path) == {"layers": {}}
