"""Sensitivity curves and the per-layer allocation drawn from them."""

from __future__ import annotations

import copy

import pytest
import torch

from secateur.analysis.sensitivity import allocate, sensitivity
from secateur.train import TrainConfig, evaluate, fit
from secateur.zoo.models import build_model


def curve(costs: list[float], kept: list[float], baseline: float = 0.99) -> list[dict]:
    return [{"strength": float(i + 1), "kept": k, "val_accuracy": baseline - c / 100}
            for i, (c, k) in enumerate(zip(costs, kept))]


def test_big_cheap_layers_are_pushed_furthest():
    kept = [0.5, 0.25, 0.12, 0.06]
    curves = {"big": curve([0.0, 0.0, 0.1, 0.3], kept), "small": curve([0.2, 0.8, 2.0, 5.0], kept)}
    strengths = allocate(curves, {"big": 100_000, "small": 500}, 0.99, tolerance=0.5)
    assert strengths["big"] == 4.0
    assert strengths["small"] < strengths["big"]


def test_allocation_respects_the_tolerance():
    kept = [0.5, 0.25]
    curves = {"a": curve([2.0, 4.0], kept), "b": curve([3.0, 5.0], kept)}
    strengths = allocate(curves, {"a": 10, "b": 10}, 0.99, tolerance=1.0)
    assert all(value < 1.0 for value in strengths.values())  # no step fits in 1 point


@pytest.fixture(scope="module")
def small(mnist):
    return mnist.subset(train=2000, val=500, test=100)


def test_sensitivity_on_a_trained_model(small):
    torch.manual_seed(0)
    model = build_model("lenet300")
    fit(model, small, TrainConfig(epochs=2), progress=False)
    before = copy.deepcopy(model.state_dict())
    analysis = sensitivity(model, lambda m: evaluate(m, small, "val"), strengths=(1.0, 3.0, 6.0))
    assert set(analysis["layers"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for points in analysis["layers"].values():
        kept = [p["kept"] for p in points]
        assert kept == sorted(kept, reverse=True) and kept[-1] < 0.05
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)  # model untouched
    factors = analysis["factors"]
    sizes = {"fc1.weight": 235200, "fc2.weight": 30000, "fc3.weight": 1000}
    weighted = sum(factors[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert weighted == pytest.approx(1.0)


def test_magnitude_factors_protect_small_layers_with_large_weights():
    from secateur.analysis.sensitivity import magnitude_factors

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(400, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))
    with torch.no_grad():
        model[2].weight.mul_(10)  # the small classifier has much larger weights
    factors = magnitude_factors(model, ["0.weight", "2.weight"], reference_sparsity=0.9)
    assert factors["0.weight"] > 1.0 > factors["2.weight"]
    weighted = (factors["0.weight"] * 120_000 + factors["2.weight"] * 3000) / 123_000
    assert weighted == pytest.approx(1.0)
