"""Models at their natural inputs (torchvision: ImageNet's), the dataset's when one is given, and
``weights=`` / ``--weights``: a local safetensors state dict loaded into the built model."""

from __future__ import annotations

import json
import pickle

import pytest
import safetensors.torch
import torch

import secateur
from secateur.app.cli import main
from secateur.errors import ConfigError
from secateur.io import rundir
from secateur.train import TrainConfig
from secateur.zoo.baseline import train_baseline
from secateur.zoo.models import build_model, natural_defaults


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def _state_file(model: torch.nn.Module, path) -> str:
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


# --------------------------------------------------------------------------- natural inputs


def test_torchvision_models_default_to_imagenet_and_the_zoo_to_mnist():
    assert natural_defaults("torchvision:resnet18") == ((3, 224, 224), 1000)
    assert natural_defaults("lenet5") == ((1, 28, 28), 10)
    resnet = build_model("torchvision:resnet18")
    assert resnet.fc.out_features == 1000 and resnet.conv1.in_channels == 3
    assert resnet._secateur_model["args"] == {"input_shape": [3, 224, 224], "num_classes": 1000, "in_channels": 3}
    assert build_model("lenet5")._secateur_model["args"] == {"input_shape": [1, 28, 28], "num_classes": 10}


def test_info_of_a_torchvision_model_needs_no_flags(capsys):
    code, out, err = run_cli(capsys, "info", "torchvision:resnet18")
    assert code == 0, err
    assert "11,689,512" in out and "3x224x224" in out and "1,814,073,344" in out
    code, out, _ = run_cli(capsys, "info", "lenet5")
    assert code == 0 and "1x28x28" in out
    code, out, _ = run_cli(capsys, "info", "torchvision:resnet18", "--input-shape", "1,32,32", "--num-classes", "10")
    assert code == 0 and "1x32x32" in out


def test_a_torchvision_model_takes_the_datasets_shape_and_classes(small, tmp_path):
    data = small.subset(train=64, val=64, test=64)
    baseline = train_baseline("torchvision:resnet18", data, config=TrainConfig(epochs=1, batch_size=32, device="cpu"),
                              out=tmp_path / "base")
    assert baseline.meta["model"]["args"] == {"input_shape": [1, 28, 28], "num_classes": 10, "in_channels": 1}
    assert baseline.model.conv1.in_channels == 1 and baseline.model.fc.out_features == 10
    loaded, _ = secateur.load_model(tmp_path / "base")  # rebuilt with its 1-channel stem
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), baseline.model.eval()(x))


def test_a_torchvision_record_from_before_in_channels_still_loads(tmp_path):
    model = build_model("torchvision:resnet18", input_shape=(3, 32, 32), num_classes=10)
    secateur.save_model(model, tmp_path / "old")
    header = json.loads((tmp_path / "old.json").read_text())
    header["model"]["args"] = {"input_shape": [1, 28, 28], "num_classes": 10}  # what an older secateur wrote
    (tmp_path / "old.json").write_text(json.dumps(header))
    loaded, _ = secateur.load_model(tmp_path / "old")
    assert loaded.conv1.in_channels == 3


def test_inputs_too_small_for_a_torchvision_model_are_one_line():
    with pytest.raises(ConfigError, match="cannot take inputs of shape 1,8,8") as info:
        build_model("torchvision:squeezenet1_1", input_shape=(1, 8, 8), num_classes=10)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- weights files


def test_weights_load_into_the_built_model_without_pickle(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source = build_model("lenet5")
    path = _state_file(source, tmp_path / "w.safetensors")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    torch.manual_seed(2)
    model = build_model("lenet5", weights=path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), source(x))
    assert "weights" not in model._secateur_model["args"]  # the checkpoint holds the weights, not the file name


def test_weights_that_do_not_fit_name_the_first_keys(tmp_path):
    path = _state_file(build_model("lenet300"), tmp_path / "lenet300.safetensors")
    with pytest.raises(ConfigError) as info:
        build_model("lenet5", weights=path)
    message = str(info.value)
    assert "\n" not in message and "missing conv1.weight, conv1.bias, conv2.weight ..." in message
    assert "unexpected fc3.bias, fc3.weight (2)" in message and "wrong shape fc1.weight (300, 784)" in message
    torch.save(build_model("lenet5").state_dict(), tmp_path / "pickled.pt")
    with pytest.raises(ConfigError, match="is not a safetensors file"):
        build_model("lenet5", weights=tmp_path / "pickled.pt")
    with pytest.raises(ConfigError, match="not found"):
        build_model("lenet5", weights=tmp_path / "nowhere.safetensors")


def test_cli_train_starts_from_weights_and_records_them(capsys, tmp_path):
    torch.manual_seed(3)
    source = build_model("lenet300", input_shape=(1, 8, 8))
    path = _state_file(source, tmp_path / "w.safetensors")
    code, _, err = run_cli(capsys, "train", "--model", "lenet300", "--dataset", "digits", "--weights", path,
                           "--epochs", "0", "--out", str(tmp_path / "base"), "--quiet")
    assert code == 0, err
    model, meta = secateur.load_model(tmp_path / "base")
    assert torch.equal(model.fc1.weight, source.fc1.weight)
    assert meta["weights"]["file"] == "w.safetensors" and len(meta["weights"]["sha256"]) == 64
    code, out, _ = run_cli(capsys, "info", "lenet300", "--input-shape", "1,8,8", "--weights", path)
    assert code == 0 and f"{secateur.count_params(source):,}" in out


def test_cli_weights_mistakes_are_one_line(capsys, tmp_path):
    path = _state_file(build_model("lenet300"), tmp_path / "w.safetensors")
    code, _, err = run_cli(capsys, "info", "lenet5", "--weights", path)
    _one_line(code, err, "does not fit the model", "missing conv1.weight")
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--weights", str(tmp_path / "no.safetensors"),
                           "--out", str(tmp_path / "x"))
    _one_line(code, err, "--weights", "does not exist")
    base = tmp_path / "base"
    secateur.save_model(build_model("lenet300"), rundir.model_base(base))
    code, _, err = run_cli(capsys, "prune", "--from", str(base), "--weights", path, "--out", str(tmp_path / "run"))
    _one_line(code, err, "--weights", "--from")
    assert not (tmp_path / "run").exists()


def test_a_run_whose_baseline_exists_takes_only_the_weights_it_started_from(tmp_path):
    from secateur.app.pipeline import obtain_baseline

    data = secateur.load_dataset("digits")
    first = _state_file(build_model("lenet300", input_shape=(1, 8, 8)), tmp_path / "first.safetensors")
    other = _state_file(build_model("lenet300", input_shape=(1, 8, 8)), tmp_path / "other.safetensors")
    train_baseline("lenet300", data, out=rundir.baseline_dir(tmp_path / "run"), weights=first,
                   config=TrainConfig(epochs=0))
    again = obtain_baseline("lenet300", data, tmp_path / "run", from_dir=None, train_config=None, progress=False,
                            weights=first)
    assert again.meta["weights"]["file"] == "first.safetensors"
    with pytest.raises(ConfigError, match="is not the file the baseline"):
        obtain_baseline("lenet300", data, tmp_path / "run", from_dir=None, train_config=None, progress=False,
                        weights=other)
