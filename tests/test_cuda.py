"""Devices: ``auto`` resolution, errors fit their caller, bf16 autocast, and the whole CUDA path.

The ``cuda`` tests run masks, surgery, training, evaluation, latency and a small prune run on a
GPU; each is skipped only where ``torch.cuda.is_available()`` is false. The rest run on the CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch

import secateur
from secateur.analysis import metrics
from secateur.analysis.metrics import measure_latency
from secateur.app.cli import main
from secateur.errors import ConfigError, UnknownNameError
from secateur.train import TrainConfig, evaluate, fit, resolve_device
from secateur.zoo.models import build_model

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def ieee(monkeypatch):
    """Full float32 on the GPU (no TF32), so GPU and CPU outputs compare closely."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- auto, on any machine


def test_auto_is_the_default_and_picks_cuda_only_when_present(monkeypatch):
    assert TrainConfig().device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("AUTO") == torch.device("cuda")


def test_saved_recipes_keep_their_device_and_old_ones_without_it_get_auto():
    assert TrainConfig.from_dict({"device": "cpu", "epochs": 2}).device == "cpu"
    assert TrainConfig.from_dict({"epochs": 2}).device == "auto"
    assert TrainConfig.from_dict({"epochs": 2}).autocast == "none"


def test_the_api_error_names_the_keyword_and_the_cli_error_the_flag(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        TrainConfig(device="cuda").validate()
    message = str(info.value)
    assert 'device="cpu"' in message and "--device" not in message and "\n" not in message
    code, err = _cli(capsys, "train", "--model", "lenet5", "--device", "cuda", "--out", str(tmp_path / "x"))
    assert code == 2 and "--device cpu" in err and 'device="' not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_unknown_devices_are_one_line_errors_everywhere(capsys, tmp_path):
    for bad in ("tpu", "mps", "cuda:x"):
        with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N"):
            resolve_device(bad)
    code, err = _cli(capsys, "train", "--model", "lenet5", "--device", "tpu", "--out", str(tmp_path / "x"))
    assert code == 2 and "--device" in err and "tpu" in err


def test_fit_on_auto_trains_where_auto_points(small, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = build_model("lenet300")
    fit(model, small.subset(train=256), TrainConfig(epochs=1, device="auto"), progress=False)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_cpu_latency_is_timed_by_the_wall_clock(monkeypatch):
    def no_events(*_args: object) -> float:
        raise AssertionError("CUDA events on a CPU model")

    monkeypatch.setattr(metrics, "_cuda_timer", no_events)
    assert 0 < measure_latency(build_model("lenet300"), (1, 28, 28), repeats=3, warmup=1) < 1


# --------------------------------------------------------------------------- bf16 autocast, on the CPU


def test_bf16_autocast_runs_the_training_steps_in_bfloat16_and_keeps_float32_weights(small):
    seen = []

    def step(model, x, y):
        seen.append((torch.is_autocast_enabled("cpu"), model(x).dtype))
        return torch.nn.functional.cross_entropy(model(x), y)

    torch.manual_seed(0)
    model = build_model("lenet300")
    result = fit(model, small.subset(train=512), TrainConfig(epochs=1, autocast="bf16", device="cpu"), step=step,
                 progress=False)
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.val_accuracy > 0.5  # it learns
    seen.clear()
    fit(build_model("lenet300"), small.subset(train=128), TrainConfig(epochs=1, device="cpu"), step=step,
        progress=False)
    assert seen and not any(enabled for enabled, _ in seen)


def test_bf16_retraining_in_a_prune_run_on_the_cpu(small, trained_lenet300, monkeypatch):
    casts, autocast = [], torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda **kw: casts.append(kw) or autocast(**kw))
    data = small.subset(train=1000, val=500, test=500)
    result = secateur.prune(copy.deepcopy(trained_lenet300), data=data, method="magnitude", max_drop=5.0, rounds=2,
                            retrain_epochs=1, polish_epochs=0,
                            train_config=TrainConfig(lr=0.05, autocast="bf16", device="cpu"))
    assert result.compression > 1.5
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert casts and all(kw == {"device_type": "cpu", "dtype": torch.bfloat16} for kw in casts)


def test_cli_autocast_and_device_reach_the_retraining_of_a_run_from_a_trained_baseline(capsys, tmp_path,
                                                                                       monkeypatch):
    from secateur.app import pipeline

    code, err = _cli(capsys, "train", "--model", "lenet300", "--dataset", "digits", "--epochs", "0",
                     "--out", str(tmp_path / "base"), "--quiet")
    assert code == 0, err
    seen = []

    def fake_prune(model, *, train_config, **_kwargs):
        seen.append(train_config)
        raise KeyboardInterrupt  # the search itself is tested elsewhere

    monkeypatch.setattr(pipeline, "prune", fake_prune)
    code, err = _cli(capsys, "prune", "--from", str(tmp_path / "base"), "--autocast", "bf16", "--device", "cpu",
                     "--out", str(tmp_path / "run"), "--quiet")
    assert code == 130 and [(c.autocast, c.device) for c in seen] == [("bf16", "cpu")]
    assert TrainConfig.from_dict(secateur.load_model(tmp_path / "base")[1]["train"]).autocast == "none"


def test_autocast_is_a_registry_name_checked_everywhere(capsys, tmp_path):
    with pytest.raises(UnknownNameError, match="bf16"):
        TrainConfig(autocast="fp8").validate()
    code, err = _cli(capsys, "train", "--model", "lenet5", "--autocast", "fp8", "--out", str(tmp_path / "x"))
    assert code == 2 and "--autocast" in err and "bf16" in err


# --------------------------------------------------------------------------- the CUDA path


@CUDA
def test_masks_apply_on_the_weights_device_and_match_the_cpu_masks(ieee):
    torch.manual_seed(0)
    cpu = build_model("lenet300")
    gpu = copy.deepcopy(cpu).cuda()
    on_cpu = secateur.prune_weights(cpu, amount=0.8, method="magnitude")
    on_gpu = secateur.prune_weights(gpu, amount=0.8, method="magnitude")
    for name, mask in on_gpu.items():
        assert mask.device.type == "cuda" and torch.equal(mask.cpu(), on_cpu[name])
    secateur.apply_masks(gpu, {"fc1.weight": torch.ones_like(on_cpu["fc1.weight"])})  # a CPU mask on CUDA weights
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(gpu(x.cuda()).cpu(), cpu(x), atol=1e-5)


@CUDA
def test_structured_surgery_keeps_the_model_on_the_gpu_and_matches_the_cpu_cut(tmp_path, ieee):
    torch.manual_seed(0)
    cpu = build_model("resnet-mnist")
    gpu = copy.deepcopy(cpu).cuda()
    cut_cpu = secateur.prune_channels(cpu, amount=0.5)
    cut_gpu = secateur.prune_channels(gpu, amount=0.5)
    assert cut_gpu.plan.keep_out == cut_cpu.plan.keep_out
    assert {p.device.type for p in gpu.parameters()} | {b.device.type for b in gpu.buffers()} == {"cuda"}
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(gpu.eval()(x.cuda()).cpu(), cpu.eval()(x), atol=1e-3, rtol=1e-3)
    secateur.save_model(gpu, tmp_path / "m")
    loaded, _ = secateur.load_model(tmp_path / "m")
    assert torch.allclose(loaded(x), cpu(x), atol=1e-4)


@CUDA
@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_fit_and_evaluate_on_cuda(small, autocast):
    torch.manual_seed(0)
    model = build_model("lenet5")
    result = fit(model, small, TrainConfig(epochs=1, device="cuda", autocast=autocast, augment=1), progress=False)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert result.val_accuracy > 0.7
    assert evaluate(model, small, "test") == pytest.approx(evaluate(copy.deepcopy(model).cpu(), small, "test"),
                                                           abs=0.01)


@CUDA
def test_latency_on_cuda_uses_cuda_events(monkeypatch):
    calls = []
    timer = metrics._cuda_timer
    monkeypatch.setattr(metrics, "_cuda_timer", lambda m, x: calls.append(x.device.type) or timer(m, x))
    seconds = measure_latency(build_model("lenet5").cuda(), (1, 28, 28), batch_size=8, repeats=5, warmup=2)
    assert 0 < seconds < 1 and calls == ["cuda"] * 7


@CUDA
@pytest.mark.parametrize("granularity, method", [("weight", "magnitude"), ("channel", "taylor")])
def test_a_small_prune_run_on_cuda(small, tmp_path, granularity, method, ieee):
    torch.manual_seed(0)
    model = build_model("lenet5")
    fit(model, small, TrainConfig(epochs=2, device="cuda"), progress=False)
    result = secateur.prune(model, data=small, granularity=granularity, method=method, max_drop=2.0, rounds=2,
                            retrain_epochs=1, polish_epochs=1, train_config=TrainConfig(device="cuda"), distill=0.5,
                            out=tmp_path / "run")
    assert result.compression > 1.2
    assert {p.device.type for p in result.model.parameters()} == {"cuda"}
    loaded, _ = secateur.load_model(tmp_path / "run")
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(loaded(x), result.model.eval()(x.cuda()).cpu(), atol=1e-3, rtol=1e-3)
