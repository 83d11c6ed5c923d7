"""Breadth: the rest of torchvision's classification zoo prunes to equivalent, working models."""

from __future__ import annotations

import pytest
import torch
import torchvision

from structured_helpers import assert_equivalent, equivalence, n_params

# (name, input size): small inputs keep the suite quick; transformers need their native size.
MODELS = [
    ("alexnet", 64), ("googlenet", 64), ("inception_v3", 299), ("shufflenet_v2_x0_5", 64),
    ("squeezenet1_0", 64), ("mnasnet0_5", 64), ("resnext50_32x4d", 64), ("regnet_y_400mf", 64),
    ("efficientnet_v2_s", 64), ("mobilenet_v3_large", 64), ("convnext_tiny", 64), ("swin_t", 64),
    ("vgg11", 64),
]


def _outputs(out) -> list[torch.Tensor]:
    """All output tensors (main and auxiliary logits in training mode)."""
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name,size", MODELS)
def test_torchvision_breadth(name, size):
    torch.manual_seed(0)
    kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    x = torch.randn(2, 3, size, size)
    before = n_params(model)
    pruned, _plan, diff, scale = equivalence(model, x, ratio=0.5)
    assert_equivalent(diff, scale)
    assert n_params(pruned) < 0.9 * before
    pruned.train()  # training-only branches (auxiliary classifiers) must still fit
    loss = sum(t.logsumexp(1).mean() for t in _outputs(pruned(x)))
    loss.backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)
