"""The model zoo, torchvision models and user factories resolve by name and build correctly."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

from secateur.analysis.metrics import count_params
from secateur.errors import ConfigError, UnknownNameError
from secateur.zoo.models import MODELS, build_model, model_names, model_record

ZOO = ["lenet300", "lenet5", "alexnet-mnist", "vgg-mnist", "resnet-mnist"]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_zoo_is_registered_and_listed():
    assert set(ZOO) <= set(MODELS.names())
    names = model_names()
    assert set(ZOO) <= set(names)
    assert "torchvision:<name>" in names and "package.module:factory" in names


@pytest.mark.parametrize("name, expected", [("lenet300", 266_610), ("lenet5", 431_080)])
def test_han_networks_have_the_papers_parameter_counts(name, expected):
    model = build_model(name)
    assert count_params(model) == expected
    assert sum(p.numel() for p in model.parameters()) == expected


def test_lenet_layer_names_and_shapes():
    lenet300 = dict(build_model("lenet300").named_modules())
    assert [lenet300[f"fc{i}"].weight.shape for i in (1, 2, 3)] == [(300, 784), (100, 300), (10, 100)]
    lenet5 = dict(build_model("lenet5").named_modules())
    assert lenet5["conv1"].weight.shape == (20, 1, 5, 5)
    assert lenet5["conv2"].weight.shape == (50, 20, 5, 5)
    assert lenet5["fc1"].weight.shape == (500, 800)
    assert lenet5["fc2"].weight.shape == (10, 500)


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_runs_on_mnist_shaped_batches(name):
    torch.manual_seed(0)
    model = build_model(name)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters())
    pruned = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(pruned) >= 3


@pytest.mark.parametrize("name", ZOO)
def test_init_is_deterministic_under_manual_seed(name):
    torch.manual_seed(3)
    a = build_model(name).state_dict()
    torch.manual_seed(3)
    b = build_model(name).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_input_shape_and_num_classes_are_honoured():
    digits = build_model("lenet300", input_shape=(1, 8, 8))
    assert digits.fc1.in_features == 64
    assert digits(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    lenet5 = build_model("lenet5", input_shape=(3, 32, 32), num_classes=7)
    assert lenet5.fc1.in_features == 50 * 5 * 5
    for name in ("alexnet-mnist", "vgg-mnist", "resnet-mnist"):
        assert build_model(name, input_shape=(3, 32, 32), num_classes=7)(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_resnet_has_identity_and_projection_shortcuts():
    model = build_model("resnet-mnist")
    assert model.layer1[0].downsample is None
    projection = model.layer2[0].downsample
    assert isinstance(projection[0], nn.Conv2d) and projection[0].kernel_size == (1, 1)
    ids = [id(m) for m in model.modules()]
    assert len(ids) == len(set(ids))  # every module used once


def test_zoo_factories_take_their_options_and_reject_unknown_ones():
    assert build_model("vgg-mnist", widths=[8, 16, 32]).features.conv6.out_channels == 32
    with pytest.raises(ConfigError) as err:
        build_model("lenet300", width=2)
    assert "width" in one_line(err) and "lenet300" in str(err.value)


def test_bad_shapes_and_classes_are_one_line_config_errors():
    with pytest.raises(ConfigError) as err:
        build_model("lenet5", input_shape=(1, 8, 8))
    assert "too small" in one_line(err)
    with pytest.raises(ConfigError) as err:
        build_model("lenet5", input_shape=(784,))
    assert "C,H,W" in one_line(err)
    for bad in [(1, 0, 28), (), "abc"]:
        with pytest.raises(ConfigError):
            build_model("lenet300", input_shape=bad)
    with pytest.raises(ConfigError):
        build_model("lenet300", num_classes=0)


def test_unknown_zoo_name_lists_choices():
    with pytest.raises(UnknownNameError) as err:
        build_model("lenet6")
    message = one_line(err)
    assert "lenet6" in message and all(name in message for name in ZOO)
    assert "torchvision:<name>" in message


def test_names_are_case_insensitive():
    assert count_params(build_model("LeNet300")) == 266_610


def test_torchvision_models_build_without_weights():
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", num_classes=10)
    assert model.fc.out_features == 10
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert count_params(model) == 11_181_642


def test_unknown_torchvision_name_lists_torchvision_choices():
    with pytest.raises(UnknownNameError) as err:
        build_model("torchvision:resnet19")
    message = one_line(err)
    assert "resnet19" in message and "resnet18" in message and "mobilenet_v2" in message
    with pytest.raises(ConfigError):
        build_model("torchvision:resnet18", weights="DEFAULT")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A throwaway importable module ``secateur_user_nets`` with a few factories."""
    (tmp_path / "secateur_user_nets.py").write_text(textwrap.dedent("""
        import math
        from torch import nn

        def make_net(num_classes, input_shape, hidden=32):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))

        def fixed():
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))

        def not_a_model():
            return 42

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "secateur_user_nets"


def test_user_factory_gets_what_its_signature_accepts(user_module):
    model = build_model(f"{user_module}:make_net", input_shape=(1, 8, 8), num_classes=4, hidden=7)
    assert model[1].in_features == 64 and model[1].out_features == 7 and model[3].out_features == 4
    fixed = build_model(f"{user_module}:fixed", num_classes=10)
    assert fixed(torch.zeros(1, 1, 28, 28)).shape == (1, 5)


@pytest.mark.parametrize("spec, words", [
    ("secateur_user_nets:missing", "no attribute"),
    ("secateur_user_nets:not_a_model", "not a torch.nn.Module"),
    ("secateur_user_nets:NOT_CALLABLE", "not a callable"),
    ("no_such_package_xyz.mod:make", "cannot import"),
    ("secateur_user_nets:", "package.module:factory"),
])
def test_user_factory_errors_are_one_line(user_module, spec, words):
    with pytest.raises(ConfigError) as err:
        build_model(spec)
    assert words in one_line(err)


def test_user_factory_bad_kwargs(user_module):
    with pytest.raises(ConfigError) as err:
        build_model(f"{user_module}:fixed", depth=3)
    assert "depth" in one_line(err)


def test_model_record_round_trips_through_json():
    record = model_record("vgg-mnist", input_shape=(1, 28, 28), num_classes=10, widths=[8, 8, 16])
    record = json.loads(json.dumps(record))
    assert record == {"name": "vgg-mnist", "args": {"input_shape": [1, 28, 28], "num_classes": 10,
                                                    "widths": [8, 8, 16]}}
    torch.manual_seed(1)
    a = build_model(record["name"], **record["args"])
    torch.manual_seed(1)
    b = build_model("vgg-mnist", widths=(8, 8, 16))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ConfigError):
        model_record("lenet300", (1, 28, 28), 10, act=nn.ReLU())


def test_bad_zoo_option_values_are_config_errors():
    with pytest.raises(ConfigError) as err:
        build_model("alexnet-mnist", dropout=1.5)
    assert "dropout" in one_line(err)
