"""secateur.prune_weights / prune_channels: one cut of a fixed amount, as torch.nn.utils.prune's calls."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.utils.prune as torch_prune

import secateur
from secateur.errors import ConfigError, UnknownNameError
from secateur.structured.importance import GROUP_METHODS
from secateur.unstructured.masks import effective, masks_of, prunable_names
from secateur.unstructured.methods import WEIGHT_METHODS
from secateur.zoo.models import build_model


def _zoo(name: str = "lenet5") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name)


def _pruned(masks: dict[str, torch.Tensor]) -> int:
    return sum(int((~m).sum()) for m in masks.values())


def _torch_layers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    return [(model.get_submodule(name.rsplit(".", 1)[0]), "weight") for name in prunable_names(model)]


def _torch_masks(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name.rsplit(".", 1)[0]).weight_mask.bool() for name in names}


# --------------------------------------------------------------------------- weights


def test_global_magnitude_is_torch_global_unstructured_and_compounds_the_same_way():
    ours = _zoo()
    theirs = copy.deepcopy(ours)
    names, layers = prunable_names(theirs), _torch_layers(theirs)
    for amount in (0.9, 0.5):
        masks = secateur.prune_weights(ours, amount=amount, method="global-magnitude")
        torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=amount)
        assert all(torch.equal(masks[n], _torch_masks(theirs, names)[n]) for n in names)
    total = sum(m.numel() for m in masks.values())
    assert _pruned(masks) == round(0.9 * total) + round(0.5 * (total - round(0.9 * total)))  # 95%, not 90%


def test_magnitude_is_torch_l1_unstructured_layer_by_layer():
    ours = _zoo()
    theirs = copy.deepcopy(ours)
    names = prunable_names(theirs)
    masks = secateur.prune_weights(ours, amount=0.7, method="magnitude")
    for module, name in _torch_layers(theirs):
        torch_prune.l1_unstructured(module, name, amount=0.7)
    assert all(torch.equal(masks[n], m) for n, m in _torch_masks(theirs, names).items())
    assert all(int((~m).sum()) == round(0.7 * m.numel()) for m in masks.values())


@pytest.mark.parametrize("method", WEIGHT_METHODS.names())
def test_every_weight_method_removes_the_amount_of_what_survives_in_place(method):
    model = _zoo("lenet300")
    if WEIGHT_METHODS.get(method).learn is not None:  # sparse-vd: no training phase in a fixed cut
        with pytest.raises(ConfigError, match="training phase"):
            secateur.prune_weights(model, amount=0.5, method=method)
        return
    exact = WEIGHT_METHODS.get(method).amount_to_level is float  # han: the q of a Gaussian layer
    first = secateur.prune_weights(model, amount=0.5, method=method, seed=3)
    assert set(first) == set(prunable_names(model)) and all(m.dtype == torch.bool for m in first.values())
    assert all(torch.equal(masks_of(model)[n], m) for n, m in first.items())  # applied in place
    total = sum(m.numel() for m in first.values())
    second = secateur.prune_weights(model, amount=0.5, method=method, seed=4)
    assert all(not (s & ~f).any() for s, f in zip(second.values(), first.values()))  # masks only grow
    if exact:
        if WEIGHT_METHODS.get(method).scope == "global":
            assert _pruned(first) == round(0.5 * total)
        else:
            assert all(int((~m).sum()) == round(0.5 * m.numel()) for m in first.values())
        assert _pruned(second) == _pruned(first) + round(0.5 * (total - _pruned(first)))
    else:  # about the amount: exact for Gaussian layers, these are uniform at initialisation
        assert 0.3 < _pruned(first) / total < 0.6 and 0.5 < _pruned(second) / total < 0.85
    x = torch.randn(2, 1, 28, 28)
    assert torch.isfinite(model(x)).all()


def test_amount_zero_prunes_nothing_and_a_level_is_the_methods_own():
    model = _zoo("lenet300")
    assert _pruned(secateur.prune_weights(model, amount=0.0, method="magnitude")) == 0
    weights = {name: effective(model, name).clone() for name in prunable_names(model)}
    masks = secateur.prune_weights(model, method="han", level=1.0)  # Han's q = 1: |w| < 1 std goes
    for name, mask in masks.items():
        assert torch.equal(mask, weights[name].abs() >= weights[name].std())


def test_prune_weights_clears_the_optimizer_state_it_is_given_and_takes_targets():
    model = _zoo("lenet300")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    masks = secateur.prune_weights(model, amount=0.5, method="magnitude", targets=["fc1.weight"], optimizer=optimizer)
    assert list(masks) == ["fc1.weight"]
    momentum = optimizer.state[model.fc1.parametrizations.weight.original]["momentum_buffer"]
    assert not momentum[~masks["fc1.weight"]].any()


@pytest.mark.parametrize("kwargs, match", [
    ({"amount": 1.0}, r"amount must be a fraction in \[0, 1\)"),
    ({"amount": -0.1}, "amount must be a fraction"),
    ({"amount": math.nan}, "amount must be a fraction"),
    ({"amount": True}, "amount must be a fraction"),
    ({"amount": "0.5"}, "amount must be a fraction"),
    ({}, "give amount= .* not neither"),
    ({"amount": 0.5, "level": 1.0}, "not both"),
    ({"level": -1.0}, "level must be a finite number >= 0"),
    ({"amount": 0.5, "targets": ["fc9.weight"]}, "no parameter 'fc9.weight'"),
])
def test_prune_weights_mistakes_are_one_line_and_change_nothing(kwargs, match):
    model = _zoo("lenet300")
    with pytest.raises(ConfigError, match=match) as info:
        secateur.prune_weights(model, **kwargs)
    assert "\n" not in str(info.value) and not masks_of(model)


def test_unknown_methods_list_the_choices():
    with pytest.raises(UnknownNameError, match="global-magnitude"):
        secateur.prune_weights(_zoo(), amount=0.5, method="l1")
    with pytest.raises(UnknownNameError, match="fpgm"):
        secateur.prune_channels(_zoo(), amount=0.5, method="magnitude")


# --------------------------------------------------------------------------- channels


def test_prune_channels_removes_the_amount_of_every_group_in_place_and_compounds(tmp_path):
    model = _zoo()
    conv1 = model.conv1
    cut = secateur.prune_channels(model, amount=0.5, method="l1")  # input shape: the model's record
    assert model.conv1 is conv1  # the same modules, smaller tensors
    assert cut.groups == {"conv1": (10, 20), "conv2": (25, 50), "fc1": (250, 500)} and cut.kept["fc1"] == 250
    assert (model.conv1.out_channels, model.conv2.in_channels, model.conv2.out_channels) == (10, 10, 25)
    assert (model.fc1.out_features, model.fc2.in_features, model.fc2.out_features) == (250, 250, 10)
    again = secateur.prune_channels(model, amount=0.5, input_shape=(1, 28, 28))  # of what survives: floor(n / 2) go
    assert again.groups == {"conv1": (5, 10), "conv2": (13, 25), "fc1": (125, 250)}
    x = torch.randn(3, 1, 28, 28)
    secateur.save_model(model, tmp_path / "pruned")
    loaded, meta = secateur.load_model(tmp_path / "pruned")
    assert meta["plan"] is not None and loaded.conv2.out_channels == 13
    assert torch.equal(loaded(x), model.eval()(x))


def test_global_scope_removes_the_amount_of_all_channels():
    model = _zoo()
    cut = secateur.prune_channels(model, amount=0.5, scope="global", min_channels=2)
    before = sum(size for _, size in cut.groups.values())
    assert before - sum(cut.kept.values()) == math.floor(0.5 * before)
    assert min(cut.kept.values()) >= 2 and model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("method", GROUP_METHODS.names())
def test_every_channel_method_cuts_a_working_smaller_model(method, small):
    model = _zoo("vgg-mnist")
    params = secateur.count_params(model)
    if GROUP_METHODS.get(method).learn is not None:  # l0: no training phase in a fixed cut
        with pytest.raises(ConfigError, match="training phase"):
            secateur.prune_channels(model, amount=0.25, method=method, data=small)
        return
    secateur.prune_channels(model, amount=0.25, method=method, data=small)
    assert secateur.count_params(model) < 0.8 * params
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_prune_channels_takes_the_users_own_batches_for_gradient_methods():
    model = _zoo()
    loader = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(2)]
    assert secateur.prune_channels(model, amount=0.5, method="taylor", batches=loader).kept["conv1"] == 10
    with pytest.raises(ConfigError, match="needs batches"):
        secateur.prune_channels(_zoo(), amount=0.5, method="taylor")


@pytest.mark.parametrize("kwargs, match", [
    ({"amount": 1.0}, "amount must be a fraction"),
    ({"amount": 0.5, "scope": "everywhere"}, "unknown scope"),
    ({"amount": 0.5, "input_shape": (0, 28)}, "input_shape must be positive"),
    ({"amount": 0.5, "method": "taylor", "batches": [torch.zeros(2)]}, r"\(inputs, targets\) pairs"),
])
def test_prune_channels_mistakes_are_one_line_and_change_nothing(kwargs, match):
    model = _zoo()
    with pytest.raises(ConfigError, match=match) as info:
        secateur.prune_channels(model, **kwargs)
    assert "\n" not in str(info.value) and model.conv1.out_channels == 20


def test_a_model_not_built_by_secateur_needs_its_input_shape():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 40), torch.nn.ReLU(), torch.nn.Linear(40, 10))
    with pytest.raises(ConfigError, match="pass input_shape="):
        secateur.prune_channels(model, amount=0.5)
    assert secateur.prune_channels(model, amount=0.5, input_shape=(1, 28, 28)).kept == {"1": 20}


def test_a_model_that_is_not_a_module_is_one_line():
    for call in (secateur.prune_weights, secateur.prune_channels):
        with pytest.raises(ConfigError, match=r"^model must be a torch\.nn\.Module"):
            call("lenet5", amount=0.5)
