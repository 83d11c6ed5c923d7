"""fit's trusted-mask fast path: the same weights as the where path, pruned entries exactly +0.0."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

import secateur.train as train_module
from secateur.train import TrainConfig, fit
from secateur.unstructured.masks import (
    Mask,
    apply_masks,
    effective_state_dict,
    masks_of,
    prunable_names,
    trusted_masks,
)
from secateur.zoo.loaders import Loaders

OPTIMIZERS = {
    "sgd": TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-3),
    "adam": TrainConfig(epochs=2, batch_size=16, optimizer="adam", lr=0.01, weight_decay=5e-3),
    "adamw": TrainConfig(epochs=2, batch_size=16, optimizer="adamw", lr=0.01, weight_decay=5e-2),
}


class Net(nn.Module):
    """Conv, BatchNorm and Linear layers, so every kind of masked tensor and a buffer are involved."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _data() -> Loaders:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 1, 6, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    return Loaders(train=TensorDataset(x, y), val=TensorDataset(x[:32], y[:32]), num_classes=3)


def _masked(keep: float = 0.3) -> tuple[Net, dict[str, torch.Tensor]]:
    model = Net()
    g = torch.Generator().manual_seed(2)
    masks = {n: torch.rand(p.shape, generator=g) < keep
             for n, p in model.named_parameters() if n in prunable_names(model, include_bias=True)}
    apply_masks(model, masks)
    return model, masks


@contextlib.contextmanager
def _untrusted(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[int]:
    yield 0


def _originals(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith(".original")}


def _assert_exact(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Masks unchanged, parametrized, untrusted; effective values and stored originals +0.0 when pruned."""
    assert masks_of(model).keys() == masks.keys()
    state = effective_state_dict(model)
    for name, keep in masks.items():
        assert torch.equal(masks_of(model)[name], keep), name
        prefix, _, attr = name.rpartition(".")
        module = model.get_submodule(prefix)
        assert parametrize.is_parametrized(module, attr), name
        original = module.parametrizations[attr].original.detach()
        for tensor in (state[name], original):
            assert (tensor[~keep] == 0).all() and not torch.signbit(tensor[~keep]).any(), name
        assert module.parametrizations[attr][0].trusted is None


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_fast_path_gives_the_where_paths_weights(opt_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config, data = OPTIMIZERS[opt_name], _data()
    fast, masks = _masked()
    slow, trusted = copy.deepcopy(fast), []

    @contextlib.contextmanager
    def spy(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[int]:
        with trusted_masks(model, optimizer) as count:
            trusted.append(count)
            yield count

    monkeypatch.setattr(train_module, "trusted_masks", spy)
    fit(fast, data, config, progress=False)
    assert trusted == [len(masks)]  # every mask took the fast path
    monkeypatch.setattr(train_module, "trusted_masks", _untrusted)
    fit(slow, data, config, progress=False)
    _assert_exact(fast, masks)
    for key, value in effective_state_dict(slow).items():
        assert torch.equal(effective_state_dict(fast)[key], value), key
    assert any(not torch.equal(a, b) for a, b in zip(effective_state_dict(fast).values(),
                                                    effective_state_dict(Net()).values()))  # it trained


def test_drifted_originals_are_zeroed_on_entry() -> None:
    model, masks = _masked()
    with torch.no_grad():
        model.fc1.parametrizations.weight.original.add_(1.0)  # stale optimizer state moved them
    fit(model, _data(), OPTIMIZERS["sgd"], progress=False)
    _assert_exact(model, masks)


def _prune_during_fit(model: nn.Module, further: dict[str, torch.Tensor], seen: list[bool]) -> None:
    """fit, with ``further`` ANDed into the masks at the third forward (as the gradual schedule does)."""
    calls = {"n": 0}

    def hook(module: nn.Module, args: object) -> None:
        calls["n"] += 1
        mask = module.fc1.parametrizations.weight[0]
        if calls["n"] == 3 and module.training:
            apply_masks(module, further)
        if calls["n"] == 5:  # trusted again at the next step
            seen.append(mask.trusted == (id(mask.mask), mask.mask._version))

    handle = model.register_forward_pre_hook(hook)
    fit(model, _data(), OPTIMIZERS["sgd"], progress=False)
    handle.remove()


def test_pruning_during_fit_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mask ANDed mid-training falls back to where at once, then is trusted again: same weights."""
    fast, masks = _masked(keep=0.6)
    slow = copy.deepcopy(fast)
    further = {"fc1.weight": masks["fc1.weight"] & (torch.rand(16, 144, generator=torch.Generator().manual_seed(3))
                                                     < 0.5)}
    seen: list[bool] = []
    _prune_during_fit(fast, further, seen)
    assert seen == [True]
    _assert_exact(fast, {**masks, **further})
    monkeypatch.setattr(train_module, "trusted_masks", _untrusted)
    _prune_during_fit(slow, further, [])
    for key, value in effective_state_dict(slow).items():
        assert torch.equal(effective_state_dict(fast)[key], value), key


def test_trust_ends_on_error_and_copies_are_never_trusted() -> None:
    model, _ = _masked()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError), trusted_masks(model, optimizer) as count:
        assert count == len(prunable_names(model, include_bias=True))
        copied = copy.deepcopy(model)
        assert all(m.trusted is None for m in copied.modules() if isinstance(m, Mask))
        assert all(m.trusted is not None for m in model.modules() if isinstance(m, Mask))
        raise RuntimeError("stop")
    assert all(m.trusted is None for m in model.modules() if isinstance(m, Mask))
    assert not optimizer._optimizer_step_pre_hooks


def test_tied_weights_train_as_one_under_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.enc, self.dec, self.head = nn.Linear(36, 36), nn.Linear(36, 36), nn.Linear(36, 3)
            self.dec.weight = self.enc.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.dec(torch.relu(self.enc(x.flatten(1)))))

    fast = Tied()
    keep = torch.rand(36, 36, generator=torch.Generator().manual_seed(4)) < 0.3
    apply_masks(fast, {"enc.weight": keep})
    slow = copy.deepcopy(fast)
    fit(fast, _data(), OPTIMIZERS["adamw"], progress=False)
    monkeypatch.setattr(train_module, "trusted_masks", _untrusted)
    fit(slow, _data(), OPTIMIZERS["adamw"], progress=False)
    assert fast.enc.parametrizations.weight.original is fast.dec.parametrizations.weight.original
    assert (fast.dec.weight[~keep] == 0).all() and (fast.enc.parametrizations.weight.original[~keep] == 0).all()
    assert torch.allclose(fast.dec.weight, slow.dec.weight, rtol=1e-5, atol=1e-7)
