"""``timm:<name>``: timm's models build by name through the MODELS registry, never downloading weights."""

from __future__ import annotations

import sys

import pytest
import torch

from secateur.errors import ConfigError, UnknownNameError
from secateur.io.storage import load_model, save_model
from secateur.zoo.models import MODELS, build_model, model_names, natural_defaults


def test_timm_family_is_listed_and_resolves():
    assert "timm:<name>" in MODELS.names() and "timm:<name>" in model_names()
    assert "timm:resnet18" in MODELS and "timm:no-such-model" in MODELS  # a family: checked when built


def test_a_timm_model_builds_for_the_given_inputs_and_classes():
    torch.manual_seed(0)
    model = build_model("timm:resnet18", input_shape=(1, 32, 32), num_classes=10)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_timm_natural_inputs_come_from_its_configuration():
    assert natural_defaults("timm:resnet18") == ((3, 224, 224), 1000)
    assert natural_defaults("timm:mobilevit_xxs") == ((3, 256, 256), 1000)
    assert natural_defaults("lenet5") == ((1, 28, 28), 10)


def test_a_timm_model_saves_and_loads_through_its_record(tmp_path):
    torch.manual_seed(0)
    model = build_model("timm:resnet18", input_shape=(3, 32, 32), num_classes=4).eval()
    save_model(model, tmp_path / "m")
    again, _ = load_model(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.eval()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name, options, words", [
    ("timm:no_such_model", {}, ["unknown timm model", "no_such_model"]),
    ("timm:resnet18", {"pretrained": True}, ["pretrained", "secateur sets it"]),
    ("timm:resnet18", {"no_such_option": 1}, ["cannot build timm:resnet18"]),
])
def test_timm_errors_are_one_line(name, options, words):
    with pytest.raises((ConfigError, UnknownNameError)) as err:
        build_model(name, input_shape=(3, 32, 32), num_classes=10, **options)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words)


def test_missing_timm_is_one_line_saying_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ConfigError, match=r"need the timm package.*pip install") as err:
        build_model("timm:resnet18", input_shape=(3, 32, 32), num_classes=10)
    assert "\n" not in str(err.value)
