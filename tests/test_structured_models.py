"""Structured pruning on the zoo and the named torchvision models: equivalence, size, save/load, training."""

from __future__ import annotations

import pickle

import pytest
import torch

from secateur.analysis.metrics import count_macs, count_params
from secateur.io.storage import load_model, save_model
from secateur.zoo.models import build_model, model_record
from structured_helpers import assert_equivalent, equivalence, train_step

ZOO = ["lenet300", "lenet5", "alexnet-mnist", "vgg-mnist", "resnet-mnist"]
TORCHVISION = ["resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121",
               "efficientnet_b0", "regnet_x_400mf"]


def _no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any unpickling during loading fail loudly."""
    def refuse(*_a, **_k):
        raise AssertionError("load_model unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def _full_check(name: str, shape: tuple[int, ...], tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape[1:], num_classes=10)
    x = torch.randn(*shape)
    params, macs = count_params(model), count_macs(model, shape[1:])
    pruned, plan, diff, scale = equivalence(model, x, ratio=0.5)
    assert_equivalent(diff, scale)
    assert count_params(pruned) < 0.75 * params
    assert count_macs(pruned, shape[1:]) < 0.75 * macs
    assert type(pruned) is type(model)
    assert not any("mask" in k for k in pruned.state_dict())

    save_model(pruned, tmp_path / "pruned")  # the model carries its factory and plan
    _no_pickle(monkeypatch)
    loaded, meta = load_model(tmp_path / "pruned")  # no template: rebuilt from the header alone
    monkeypatch.undo()
    assert meta["model"] == model_record(name, shape[1:], 10) and meta["plan"] == plan.to_json()
    assert not loaded.training
    pruned.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    train_step(loaded, x)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_prunes_equivalently_saves_and_trains(name, tmp_path, monkeypatch):
    _full_check(name, (2, 1, 28, 28), tmp_path, monkeypatch)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_model_prunes_equivalently_saves_and_trains(name, tmp_path, monkeypatch):
    _full_check(f"torchvision:{name}", (2, 3, 64, 64), tmp_path, monkeypatch)


def test_lenet300_neurons_are_removed_but_classifier_kept():
    model = build_model("lenet300")
    pruned, plan, _diff, _scale = equivalence(model, torch.randn(2, 1, 28, 28), ratio=0.5)
    assert (pruned.fc1.out_features, pruned.fc2.in_features) == (150, 150)
    assert (pruned.fc2.out_features, pruned.fc3.in_features) == (50, 50)
    assert pruned.fc3.out_features == 10 and pruned.fc1.in_features == 784
    assert "fc3" not in plan.keep_out


def test_lenet5_flatten_expands_channels_to_features():
    model = build_model("lenet5")
    pruned, plan, diff, scale = equivalence(model, torch.randn(2, 1, 28, 28), ratio=0.5)
    kept = plan.keep_out["conv2"]
    assert len(kept) == 25
    hw = 4 * 4
    expected = [c * hw + i for c in kept for i in range(hw)]
    assert plan.keep_in["fc1"] == expected
    assert pruned.fc1.in_features == 25 * hw
    assert_equivalent(diff, scale)
