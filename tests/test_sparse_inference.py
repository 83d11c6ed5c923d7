"""Sparse CPU inference (secateur.sparse_model): same outputs as dense, only sparse layers swapped."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import secateur
from secateur.errors import ConfigError
from secateur.inference import SparseConv2d, SparseLinear, sparse_model
from secateur.inference.sparse import choose_layout
from secateur.unstructured.masks import apply_masks, masks_of


def _masked(name: str, keep: float = 0.05) -> nn.Module:
    """A zoo model with every Linear/Conv2d weight masked to ``keep`` of its entries."""
    torch.manual_seed(0)
    model = secateur.build_model(name)
    layers = {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    apply_masks(model, {n: torch.rand_like(w) < keep for n, w in layers.items()})
    return model.eval()


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("options", [{}, {"layout": "bsr", "min_sparsity": 0.0}, {"layout": "auto"},
                                     {"convs": True, "min_sparsity": 0.0}])
def test_sparse_model_equals_dense_at_batch_1_and_32(name, options):
    model = _masked(name)
    sparse = sparse_model(model, **options)
    assert any(isinstance(m, SparseLinear) for m in sparse.modules())
    assert any(isinstance(m, SparseConv2d) for m in sparse.modules()) == (options.get("convs", False)
                                                                          and name == "lenet5")
    for batch in (1, 32):
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            assert (sparse(x) - model(x)).abs().max() <= 1e-5


def test_layers_below_the_threshold_stay_dense_and_the_input_is_untouched():
    torch.manual_seed(0)
    model = secateur.build_model("lenet300").eval()
    apply_masks(model, {"fc1.weight": torch.rand(300, 784) < 0.05, "fc2.weight": torch.rand(100, 300) < 0.5})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparse = sparse_model(model)
    assert isinstance(sparse.fc1, SparseLinear)
    assert type(sparse.fc2) is nn.Linear and type(sparse.fc3) is nn.Linear  # 50% and 0% zeros: below 90%
    assert set(masks_of(model)) == {"fc1.weight", "fc2.weight"}  # the caller's masks are kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, SparseLinear) for m in sparse_model(secateur.build_model("lenet300")).modules())


def test_auto_layout_picks_bsr_only_for_block_zeros():
    blocks = torch.zeros(64, 64)
    blocks[:16, 16:32] = torch.randn(16, 16)
    assert choose_layout(blocks, "auto", 16) == "bsr"
    scattered = torch.randn(64, 64) * (torch.rand(64, 64) < 0.05)
    assert choose_layout(scattered, "auto", 16) == "csr"
    assert choose_layout(torch.randn(10, 30), "bsr", 16) == "csr"  # the block does not divide the shape


def test_a_sparse_model_copies_moves_and_takes_any_leading_dims():
    layer = nn.Linear(40, 8)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < 0.05)
    sparse = sparse_model(layer)
    assert isinstance(sparse, SparseLinear)
    x = torch.randn(2, 3, 40)
    twin = copy.deepcopy(sparse)
    twin.load_state_dict(sparse.state_dict())
    with torch.no_grad():
        assert (twin(x) - layer(x)).abs().max() <= 1e-5
        assert twin.to(torch.float64)(x.double()).dtype == torch.float64


@pytest.mark.parametrize("bad", [{"layout": "coo"}, {"min_sparsity": 1.5}, {"blocksize": 0}])
def test_bad_options_are_one_line_errors(bad):
    with pytest.raises(ConfigError):
        sparse_model(nn.Linear(4, 4), **bad)


def test_exported_at_the_top_level():
    assert secateur.sparse_model is sparse_model
