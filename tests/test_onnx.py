"""ONNX export (secateur.export format ``onnx``): verified by onnxruntime, dynamic batch, user's model untouched."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from secateur.app.cli import main
from secateur.errors import ConfigError, ExportError
from secateur.export import EXPORT_FORMATS, export_model
from secateur.io.storage import save_model
from secateur.structured import prune_channels
from secateur.unstructured.masks import apply_masks, masks_of
from secateur.zoo.models import MODELS, build_model

FAST = {"latency_runs": 0, "exporter": "torchscript"}  # the dynamo exporter takes seconds per model: one test uses it


def _ort_max_diff(path, model: nn.Module, shape: tuple[int, ...]) -> float:
    """Max |onnxruntime - PyTorch| of the written file, at two batch sizes (the batch axis is dynamic)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (2, 5):
        x = torch.randn(batch, *shape)
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            worst = max(worst, float(np.abs(out - model.eval()(x).numpy()).max()))
    return worst


@pytest.mark.parametrize("name", [n for n in MODELS.names() if "<" not in n])  # zoo names, not families
def test_every_zoo_model_exports_and_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name)
    done = export_model(model, tmp_path / "m.onnx", "onnx", **FAST)
    assert done.details["exporter"] == "torchscript" and done.details["verified_batches"] == [1, 3]
    tolerance = done.details["tolerance"]  # 1e-5, relative for outputs beyond 1 (a random ViT's logits)
    assert done.details["max_abs_diff"] <= tolerance and 1e-5 <= tolerance <= 1e-4
    assert _ort_max_diff(done.path, model, (1, 28, 28)) <= tolerance


def test_the_default_exporter_is_dynamo_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5")
    done = export_model(model, tmp_path / "m.onnx", "onnx", latency_runs=0)
    assert done.details["exporter"] == "dynamo" and "dynamo_error" not in done.details
    assert done.details["opset"] >= 18
    assert _ort_max_diff(done.path, model, (1, 28, 28)) <= 1e-5


def test_a_masked_model_exports_folded_and_is_not_modified(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet300")
    apply_masks(model, {"fc1.weight": torch.rand(300, 784) > 0.9})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    done = export_model(model, tmp_path / "m.onnx", "onnx", exporter="torchscript", latency_runs=2)
    assert set(masks_of(model)) == {"fc1.weight"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _ort_max_diff(done.path, model, (1, 28, 28)) <= 1e-5
    latency = done.details["latency"]
    assert set(latency) == {"b1", "b32"} and all(v["onnxruntime"] > 0 and v["torch"] > 0 for v in latency.values())


def test_a_structurally_pruned_model_exports_smaller(tmp_path):
    torch.manual_seed(0)
    dense = build_model("resnet-mnist").eval()
    pruned, _ = prune_channels(dense, torch.randn(1, 1, 28, 28), 0.5, inplace=False)
    small = export_model(pruned, tmp_path / "p.onnx", "onnx", **FAST)
    big = export_model(dense, tmp_path / "d.onnx", "onnx", **FAST)
    assert small.bytes < 0.5 * big.bytes
    assert _ort_max_diff(small.path, pruned, (1, 28, 28)) <= 1e-5


def test_a_torchvision_model_exports(tmp_path):
    torch.manual_seed(0)
    model = build_model("torchvision:mobilenet_v3_small", input_shape=(3, 32, 32))
    done = export_model(model, tmp_path / "m.onnx", "onnx", **FAST)
    assert _ort_max_diff(done.path, model, (3, 32, 32)) <= 1e-5 * 10


def test_input_shape_errors_are_one_line(tmp_path):
    plain = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))  # built by hand: no recorded input shape
    with pytest.raises(ConfigError, match="records no input shape; pass input_shape") as error:
        export_model(plain, tmp_path / "x.onnx", "onnx")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="does not run on inputs of shape 5"):
        export_model(plain, tmp_path / "x.onnx", "onnx", input_shape="5", **FAST)
    with pytest.raises(ConfigError, match="input_shape"):
        export_model(plain, tmp_path / "x.onnx", "onnx", input_shape="3,x")
    done = export_model(plain, tmp_path / "x.onnx", "onnx", input_shape="3,4", **FAST)
    assert done.details["input_shape"] == [3, 4]


class _Unfaithful(nn.Module):
    """Computes something else while being exported: what verification must catch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1 if torch.onnx.is_in_onnx_export() else x


def test_an_export_that_disagrees_with_pytorch_is_refused_and_not_written(tmp_path):
    with pytest.raises(ExportError, match="onnxruntime disagrees with PyTorch"):
        export_model(_Unfaithful(), tmp_path / "x.onnx", "onnx", input_shape="4", exporter="torchscript")
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnxruntime_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'secateur\[export\]'"):
        export_model(build_model("lenet300"), tmp_path / "x.onnx", "onnx")


def test_cli_exports_a_checkpoint_to_onnx(tmp_path, capsys):
    save_model(build_model("lenet5"), tmp_path / "ckpt")
    out = tmp_path / "f.onnx"
    args = ["export", str(tmp_path / "ckpt.safetensors"), "--format", "onnx", "--out", str(out)]
    assert main([*args, "--option", "latency_runs=0", "--option", "exporter=torchscript"]) == 0
    printed = capsys.readouterr().out
    assert out.stat().st_size > 0 and "onnx" in printed and '"exporter": "torchscript"' in printed
    assert main([*args, "--force", "--option", "verify=maybe"]) == 2
    assert "verify" in capsys.readouterr().err
    assert "onnx" in EXPORT_FORMATS.names()


def test_a_prune_run_exports_onnx_into_its_folder_and_reports_the_runtime_latency(tmp_path, small):
    from secateur.io import rundir
    from secateur.search.orchestrator import prune

    model = build_model("lenet300")
    out = tmp_path / "run"
    result = prune(model, data=small, max_drop=100.0, rounds=1, retrain_epochs=1, polish_epochs=0, out=out,
                   exports=("onnx",))
    done = result.results["exports"]["onnx"]
    assert done["file"] == rundir.ONNX and done["bytes"] == (out / rundir.ONNX).stat().st_size
    assert done["max_abs_diff"] <= 1e-5 and done["latency"]["b32"]["onnxruntime"] > 0
    session = onnxruntime.InferenceSession(str(out / rundir.ONNX))
    x = torch.randn(3, 1, 28, 28)
    ours = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(ours - result.model.eval()(x).detach().numpy()).max() <= 1e-5
    assert "model.onnx (onnx)" in (out / "report.md").read_text()


def test_an_unknown_run_export_fails_before_any_round(tmp_path, small):
    from secateur.errors import UnknownNameError
    from secateur.search.orchestrator import prune

    with pytest.raises(UnknownNameError, match="export format"):
        prune(build_model("lenet300"), data=small, exports=("tflite",), out=tmp_path / "run")
    assert not (tmp_path / "run" / "history.jsonl").exists()
