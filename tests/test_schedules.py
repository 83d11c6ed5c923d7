"""Schedules: the cubic ramp and the masks-only-grow guarantee through every schedule."""

from __future__ import annotations

import torch
from torch import nn

from secateur.search.schedules import SCHEDULES, cubic_strength
from secateur.unstructured.masks import apply_masks, effective
from secateur.unstructured.methods import WEIGHT_METHODS
from secateur.unstructured.pruner import WeightPruner


def test_cubic_ramp_starts_ends_and_front_loads():
    assert cubic_strength(1.0, 3.0, 0, 100) == 1.0
    assert cubic_strength(1.0, 3.0, 100, 100) == 3.0
    halfway = cubic_strength(1.0, 3.0, 50, 100)
    assert 2.5 < halfway < 3.0  # most of the pruning happens early (Zhu & Gupta)
    values = [cubic_strength(0.0, 5.0, t, 40) for t in range(41)]
    assert values == sorted(values)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    apply_masks(model, {n: torch.ones_like(effective(model, n), dtype=torch.bool) for n in ("0.weight", "2.weight")})
    return model


def sgd_steps(steps: int):
    def train(model: nn.Module) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return train


def test_every_schedule_prunes_to_the_target_and_pruned_weights_stay_zero():
    for name in SCHEDULES.names():
        model = tiny_model()
        pruner = WeightPruner(WEIGHT_METHODS.get("magnitude"), ("0.weight", "2.weight"))
        SCHEDULES.get(name).run(model, 0.0, 2.0, pruner, sgd_steps(40), 40, {})
        for target in pruner.targets:
            tensor = effective(model, target)
            assert abs((tensor == 0).float().mean().item() - 0.75) < 0.02, name


def test_gradual_prunes_during_training_not_only_at_the_end():
    model = tiny_model()
    pruner = WeightPruner(WEIGHT_METHODS.get("magnitude"), ("0.weight",))
    seen = []

    def train(m: nn.Module) -> None:
        step = sgd_steps(1)
        for _ in range(40):
            step(m)
            seen.append(float((effective(m, "0.weight") == 0).float().mean()))

    SCHEDULES.get("gradual").run(model, 0.0, 3.0, pruner, train, 40, {})
    assert 0.0 < seen[5] < seen[20] <= seen[-1]
    assert abs(seen[-1] - 0.875) < 0.02
