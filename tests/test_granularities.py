"""What each mask granularity promises: whole kernels, true N:M patterns, layers in a fixed order."""

from __future__ import annotations

import torch

from secateur.search.config import PruneConfig
from secateur.search.pruner import Context
from secateur.unstructured.masks import effective, masks_of, prunable_names
from secateur.zoo.models import build_model


def built(granularity: str, model: torch.nn.Module):
    config = PruneConfig(granularity=granularity).validate()
    spec = config.spec
    targets = tuple(prunable_names(model))
    baseline = spec.prepare(model, targets)
    pruner, _ = spec.build(baseline, config, Context(targets, (1, 28, 28), lambda m: 1.0, None, None))
    return baseline, pruner


def test_kernel_granularity_zeroes_whole_kernels_and_only_conv_weights():
    torch.manual_seed(0)
    baseline, pruner = built("kernel", build_model("lenet5"))
    assert set(pruner.targets) == {"conv1.weight", "conv2.weight"}
    pruner.prune(baseline, 2.0, {})
    for name in pruner.targets:
        w = effective(baseline, name)
        zero_kernels = (w.flatten(2) == 0).all(2)
        any_zero = (w.flatten(2) == 0).any(2)
        assert torch.equal(zero_kernels, any_zero)  # a kernel is pruned whole or not at all
        assert 0.6 < zero_kernels.float().mean() < 0.9  # strength 2: about three quarters
    assert "fc1.weight" not in masks_of(baseline)


def test_two_of_four_layers_keep_two_of_every_four_inputs_and_join_in_a_fixed_order():
    torch.manual_seed(0)
    baseline, pruner = built("2:4", build_model("lenet5"))
    assert "conv1.weight" not in pruner.targets  # one input channel: no group of four
    sizes = [pruner.sizes[name] for name in pruner.targets]
    partial = pruner.layers_at(0.05)
    assert 0 < len(partial) < len(pruner.targets) and partial == pruner.targets[: len(partial)]
    pruner.prune(baseline, 12.0, {})
    for name in pruner.targets:
        w = effective(baseline, name)
        rows = w if w.dim() == 2 else w.movedim(1, -1)
        assert ((rows.reshape(-1, 4) != 0).sum(1) <= 2).all()
    kept = sum(int((effective(baseline, n) != 0).sum()) for n in pruner.targets)
    assert kept == sum(sizes) // 2
