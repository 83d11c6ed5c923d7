"""Binary weight masks: pruned entries stay exactly zero through training, copies and reloads."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.unstructured.masks import (
    apply_mask,
    apply_masks,
    clear_masks,
    effective,
    effective_state_dict,
    is_masked,
    make_permanent,
    mask_of,
    mask_optimizer_state_,
    masks_of,
    prunable_names,
    reapply_masks_,
)


class ConvNet(nn.Module):
    """Small conv net with BatchNorm, so buffers and several layer types are involved."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _net(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet()


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)


def _random_masks(model: nn.Module, keep: float = 0.5, seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.rand(effective(model, n).shape, generator=g) < keep
        for n in prunable_names(model, include_bias=True)
    }


def _original(model: nn.Module, qualified: str) -> torch.Tensor:
    prefix, _, name = qualified.rpartition(".")
    return model.get_submodule(prefix).parametrizations[name].original


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    x, y = _batch()
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=5e-2),
}


def _assert_pruned_zero(model: nn.Module, masks: dict[str, torch.Tensor], originals: bool = True) -> None:
    for name, keep in masks.items():
        assert torch.equal(masks_of(model)[name], keep), name
        assert (effective(model, name)[~keep] == 0).all(), name
        if originals:
            assert (_original(model, name).detach()[~keep] == 0).all(), name


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_pruned_stay_zero_with_fresh_optimizer(opt_name: str) -> None:
    model = _net()
    masks = _random_masks(model)
    apply_masks(model, masks)
    before = {n: effective(model, n).clone() for n in masks}
    opt = OPTIMIZERS[opt_name](model.parameters())
    _train(model, opt, 100)
    _assert_pruned_zero(model, masks)
    # The optimizer still trains the masked parameters at kept positions.
    for name, keep in masks.items():
        assert not torch.equal(effective(model, name)[keep], before[name][keep]), name


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_stale_optimizer_state_cannot_revive_pruned(opt_name: str) -> None:
    model = _net()
    opt = OPTIMIZERS[opt_name](model.parameters())
    _train(model, opt, 5)  # momentum / Adam moments are now nonzero everywhere
    masks = _random_masks(model)
    apply_masks(model, masks, optimizer=opt)
    for name, keep in masks.items():
        for state in opt.state[_original(model, name)].values():
            if state.shape == keep.shape:
                assert (state[~keep] == 0).all()
    _train(model, opt, 100)
    _assert_pruned_zero(model, masks)


def test_stale_state_without_optimizer_keeps_effective_zero_and_is_repairable() -> None:
    model = _net()
    opt = OPTIMIZERS["sgd"](model.parameters())
    _train(model, opt, 5)
    masks = _random_masks(model)
    apply_masks(model, masks)  # optimizer not given: stored originals may drift
    _train(model, opt, 100)
    drifted = any((_original(model, n).detach()[~k] != 0).any() for n, k in masks.items())
    assert drifted, "momentum should move the stored original when its state is not cleared"
    _assert_pruned_zero(model, masks, originals=False)
    plain = effective_state_dict(model)
    assert all((plain[n][~k] == 0).all() for n, k in masks.items())
    reapply_masks_(model)
    _assert_pruned_zero(model, masks)
    assert mask_optimizer_state_(opt, model) == len(masks)
    _train(model, opt, 20)
    _assert_pruned_zero(model, masks)


def test_deepcopy_is_exact_and_independent() -> None:
    model = _net()
    apply_masks(model, _random_masks(model))
    _train(model, OPTIMIZERS["sgd"](model.parameters()), 3)
    model.eval()
    clone = copy.deepcopy(model)
    x, _ = _batch(5)
    assert torch.equal(model(x), clone(x))
    for name, keep in masks_of(model).items():
        assert torch.equal(masks_of(clone)[name], keep)
        assert torch.equal(effective(clone, name), effective(model, name))
    before = {k: v.clone() for k, v in effective_state_dict(model).items()}
    ones = {n: torch.zeros_like(m) for n, m in masks_of(clone).items()}
    apply_masks(clone, ones)
    with torch.no_grad():
        clone.features[1].running_mean.add_(1.0)
    after = effective_state_dict(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert masks_of(model).keys() == masks_of(clone).keys()
    assert any(m.any() for m in masks_of(model).values())


def _restructure(model: nn.Module, change: str) -> None:
    if change == "permanent":
        make_permanent(model)
    elif change == "clear":
        clear_masks(model)
    else:
        apply_mask(model.fc1, "bias", torch.zeros(16, dtype=torch.bool))


@pytest.mark.parametrize("change", ["permanent", "clear", "mask_bias"])
@pytest.mark.parametrize("mutate_copy", [True, False])
def test_restructuring_a_copy_leaves_the_other_working(change: str, mutate_copy: bool) -> None:
    # deepcopy shares torch's injected Parametrized* class; changing it must not leak.
    model = _net()
    apply_masks(model, {n: m for n, m in _random_masks(model).items() if n.endswith("weight")})
    model.eval()
    x, _ = _batch(5)
    expected, masks = model(x), masks_of(model)
    clone = copy.deepcopy(model)
    changed, kept = (clone, model) if mutate_copy else (model, clone)
    _restructure(changed, change)
    assert torch.equal(kept(x), expected)
    assert masks_of(kept).keys() == masks.keys() and not is_masked(kept.fc1, "bias")
    assert torch.equal(kept.fc1.bias, changed.fc1.bias) != (change == "mask_bias")


def test_state_dict_round_trip_between_masked_models() -> None:
    src, dst = _net(0), _net(1)
    apply_masks(src, _random_masks(src, seed=3))
    apply_masks(dst, _random_masks(dst, seed=4))
    _train(src, OPTIMIZERS["adam"](src.parameters()), 3)
    dst.load_state_dict(src.state_dict())
    src.eval(), dst.eval()
    x, _ = _batch(6)
    assert torch.equal(src(x), dst(x))
    for name, keep in masks_of(src).items():
        assert torch.equal(masks_of(dst)[name], keep)


def test_effective_state_dict_loads_into_plain_model() -> None:
    model = _net()
    apply_masks(model, _random_masks(model))
    _train(model, OPTIMIZERS["sgd"](model.parameters()), 3)
    plain = _net(7)
    state = effective_state_dict(model)
    assert "fc1.weight" in state and not any("parametrizations" in k for k in state)
    assert "features.1.num_batches_tracked" in state
    plain.load_state_dict(state, strict=True)
    model.eval(), plain.eval()
    x, _ = _batch(8)
    assert torch.equal(model(x), plain(x))


def test_new_mask_never_unprunes() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        layer = nn.Linear(7, 5)
        combined = torch.ones(5, 7, dtype=torch.bool)
        for _ in range(4):
            keep = torch.rand(5, 7, generator=g) < torch.rand(1, generator=g).item()
            apply_mask(layer, "weight", keep if trial % 2 else keep.float())
            combined &= keep
            assert torch.equal(mask_of(layer, "weight"), combined)
            assert (layer.weight[~combined] == 0).all()
            assert torch.equal(layer.weight[combined], layer.parametrizations.weight.original[combined])


def test_make_permanent_gives_ordinary_modules() -> None:
    model = _net()
    apply_masks(model, _random_masks(model))
    model.eval()
    x, _ = _batch(9)
    expected = model(x)
    masks = masks_of(model)
    assert make_permanent(model) is model
    assert type(model.fc1) is nn.Linear and type(model.features[0]) is nn.Conv2d
    assert isinstance(model.fc2, nn.Linear)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert masks_of(model) == {}
    assert torch.equal(model(x), expected)
    assert (model.fc1.weight[~masks["fc1.weight"]] == 0).all()
    assert set(model.state_dict()) == set(_net().state_dict())


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


LAYERS = {
    "conv1d": (lambda: nn.Conv1d(2, 3, 3), "weight", (2, 2, 9)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3), "weight", (2, 2, 6, 6)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), "weight", (2, 2, 4, 4, 4)),
    "convT2d": (lambda: nn.ConvTranspose2d(2, 3, 3), "weight", (2, 2, 5, 5)),
    "bias": (lambda: nn.Linear(4, 6), "bias", (3, 4)),
    "custom": (Custom, "scale", (3, 6)),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_types_and_any_parameter(kind: str) -> None:
    factory, name, in_shape = LAYERS[kind]
    torch.manual_seed(0)
    layer = factory()
    keep = torch.rand(getattr(layer, name).shape) < 0.5
    apply_mask(layer, name, keep)
    assert is_masked(layer, name)
    assert (getattr(layer, name)[~keep] == 0).all()
    assert (layer.parametrizations[name].original[~keep] == 0).all()
    layer(torch.randn(in_shape)).square().sum().backward()
    grad = layer.parametrizations[name].original.grad
    assert (grad[~keep] == 0).all() and (grad[keep] != 0).any()


def test_assignment_is_masked_and_dtype_changes_keep_bool_mask() -> None:
    layer = nn.Linear(3, 2)
    keep = torch.tensor([[True, False, True], [False, True, True]])
    apply_mask(layer, "weight", keep)
    layer.weight = torch.full((2, 3), 5.0)
    assert torch.equal(layer.parametrizations.weight.original.detach(), torch.where(keep, 5.0, 0.0))
    layer.double()
    assert mask_of(layer, "weight").dtype == torch.bool
    assert layer.weight.dtype == torch.float64 and (layer.weight[~keep] == 0).all()


def test_errors_are_config_errors_and_nothing_is_half_applied() -> None:
    model = _net()
    with pytest.raises(ConfigError, match=r"shape \(16, 64\).*build the mask"):
        apply_mask(model.fc1, "weight", torch.ones(64, 16, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"did you mean fc1\.weight"):
        apply_masks(model, {"fc1.weigth": torch.ones(16, 64)})
    with pytest.raises(ConfigError, match=r"no parameter 'nope\.weight'"):
        apply_masks(model, {"nope.weight": torch.ones(1)})
    with pytest.raises(ConfigError, match="only 0 and 1"):
        apply_mask(model.fc2, "weight", torch.full((3, 16), 0.5))
    with pytest.raises(ConfigError, match="has no parameter 'running_mean'"):
        apply_mask(model.features[1], "running_mean", torch.ones(4))
    good = torch.zeros(3, 16, dtype=torch.bool)
    with pytest.raises(ConfigError):
        apply_masks(model, {"fc2.weight": good, "fc1.weight": torch.ones(2, 2)})
    assert masks_of(model) == {}
    with pytest.raises(ConfigError) as info:
        apply_masks(model, {"fc1.weight": torch.ones(1)})
    assert "\n" not in str(info.value)


def test_prunable_names_defaults() -> None:
    model = _net()
    assert prunable_names(model) == ["features.0.weight", "fc1.weight", "fc2.weight"]
    assert "fc1.bias" in prunable_names(model, include_bias=True)
    assert not any("features.1" in n for n in prunable_names(model, include_bias=True))
    assert prunable_names(model, types=(nn.Linear,)) == ["fc1.weight", "fc2.weight"]
    apply_masks(model, _random_masks(model))
    assert prunable_names(model) == ["features.0.weight", "fc1.weight", "fc2.weight"]


def test_clear_masks_restores_plain_modules() -> None:
    model = _net()
    masks = _random_masks(model)
    apply_masks(model, masks)
    original = _original(model, "fc1.weight")
    clear_masks(model)
    assert masks_of(model) == {} and type(model.fc1) is nn.Linear
    assert model.fc1.weight is original
    assert (model.fc1.weight[~masks["fc1.weight"]] == 0).all()
