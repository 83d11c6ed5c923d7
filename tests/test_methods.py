"""Unstructured criteria: what each one prunes, and that masks only grow."""

from __future__ import annotations

import re

import pytest
import torch

from secateur.errors import ConfigError, UnknownNameError
from secateur.unstructured.methods import WEIGHT_METHODS, select_masks


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(50, 40, generator=g), "b.weight": 3 * torch.randn(20, 30, generator=g)}


def test_han_threshold_is_q_times_the_layer_std():
    w = weights()
    masks = select_masks("han", w, 1.0)
    for name, tensor in w.items():
        threshold = float(tensor.std())
        assert torch.equal(masks[name], tensor.abs() >= threshold)


def test_han_uses_the_reference_std_when_given():
    w = weights()
    reference = {"a.weight": 0.5, "b.weight": 10.0}
    masks = select_masks("han", w, 1.0, reference_std=reference)
    assert torch.equal(masks["b.weight"], w["b.weight"].abs() >= 10.0)
    assert torch.equal(masks["a.weight"], w["a.weight"].abs() >= 0.5)


def test_han_per_layer_q():
    w = weights()
    masks = select_masks("han", w, {"a.weight": 0.0, "b.weight": 2.0})
    assert bool(masks["a.weight"].all())
    assert masks["b.weight"].float().mean() < 0.1


def test_magnitude_prunes_the_same_fraction_of_every_layer():
    masks = select_masks("magnitude", weights(), 0.75)
    for mask in masks.values():
        assert abs(1 - mask.float().mean().item() - 0.75) < 0.01


def test_magnitude_keeps_the_largest_weights():
    w = weights()
    keep = select_masks("magnitude", w, 0.5)["a.weight"]
    assert w["a.weight"].abs()[keep].min() >= w["a.weight"].abs()[~keep].max()


def test_global_magnitude_uses_one_threshold_across_layers():
    w = weights()
    masks = select_masks("global-magnitude", w, 0.6)
    kept = torch.cat([w[n].abs()[masks[n]] for n in w])
    pruned = torch.cat([w[n].abs()[~masks[n]] for n in w])
    assert kept.min() >= pruned.max()
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int((~m).sum()) for m in masks.values()) / total - 0.6) < 0.01
    # the larger-scale layer keeps proportionally more
    assert masks["b.weight"].float().mean() > masks["a.weight"].float().mean()


@pytest.mark.parametrize("method", ["han", "magnitude", "global-magnitude", "random"])
def test_already_zero_weights_stay_pruned(method):
    w = weights()
    w["a.weight"][:10] = 0.0
    level = 0.1 if method == "han" else 0.05
    masks = select_masks(method, w, level, generator=torch.Generator().manual_seed(0))
    assert not bool(masks["a.weight"][:10].any())


def test_random_is_seeded_and_hits_the_sparsity():
    w = weights()
    m1 = select_masks("random", w, 0.5, generator=torch.Generator().manual_seed(3))
    m2 = select_masks("random", w, 0.5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(m1[n], m2[n]) for n in w)
    assert abs(m1["a.weight"].float().mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("method", ["magnitude", "global-magnitude", "random", "han"])
def test_strength_maps_to_about_the_same_sparsity_for_every_method(method):
    g = torch.Generator().manual_seed(1)
    w = {"a.weight": torch.randn(400, 300, generator=g)}
    criterion = WEIGHT_METHODS.get(method)
    level = criterion.strength_to_level(3.0)  # about 87.5% pruned
    masks = select_masks(method, w, level, generator=g)
    assert abs(1 - masks["a.weight"].float().mean().item() - 0.875) < 0.01


def test_errors_are_one_line_config_errors():
    with pytest.raises(UnknownNameError, match=re.escape("choose one of: " + ", ".join(WEIGHT_METHODS.names()))):
        WEIGHT_METHODS.get("l0")
    with pytest.raises(ConfigError):
        select_masks("magnitude", weights(), 1.5)
    with pytest.raises(ConfigError):
        select_masks("global-magnitude", weights(), {"a.weight": 0.5, "b.weight": 0.5})
    with pytest.raises(ConfigError):
        select_masks("han", weights(), -1.0)
