"""torchvision MaxViT: its relative positional attention's heads and its embedding are pruned.

A regression test: once LayerNorm channels were followed (the residual stream pruned), the
attention's forward, which merges its heads back to the input width read from ``x.shape``,
broke; the registered ``torchvision-maxvit`` layout prunes heads and swaps in a forward that
merges to ``n_heads * head_dim``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torchvision.models.maxvit import MaxVit, RelativePositionalMultiHeadAttention

from secateur import load_model, save_model
from secateur.structured import analyse, prune_channels
from secateur.structured.attention_maxvit import PrunedRelativePositionalMultiHeadAttention
from structured_helpers import assert_equivalent, equivalence, n_params


def _maxvit() -> nn.Module:
    """A tiny MaxViT with torch's default Linear init and unit bias tables (torchvision's std 0.02
    leaves the attention's share, and the outputs, too small for a comparison to mean much)."""
    torch.manual_seed(0)
    model = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                   block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
        if isinstance(m, RelativePositionalMultiHeadAttention):
            nn.init.normal_(m.relative_position_bias_table)
    return model


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _attentions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, RelativePositionalMultiHeadAttention)]


def test_heads_are_groups_and_nothing_is_locked_at_the_attention() -> None:
    graph = analyse(_maxvit(), _images()[:1])
    assert not graph.unfollowed, graph.unfollowed
    heads = [g for g in graph.groups if g.name.endswith("attn_layer.1.to_qkv")]
    assert sorted(g.size for g in heads) == [2, 2, 4, 4]  # 16 / 8 and 32 / 8 heads, window and grid


def test_pruned_maxvit_equals_the_zeroed_original_and_round_trips(tmp_path: Path) -> None:
    original, x = _maxvit(), _images()
    pruned, _plan, diff, scale = equivalence(copy.deepcopy(original), x, 0.5)
    assert_equivalent(diff, scale)
    assert scale > 1e-2
    assert pruned(x).shape == (2, 10)
    assert n_params(pruned) < 0.5 * n_params(original)
    attns = _attentions(pruned)
    assert all(type(a) is PrunedRelativePositionalMultiHeadAttention for a in attns)
    assert [a.n_heads for a in attns] == [1, 1, 2, 2]
    for a in attns:
        assert a.to_qkv.out_features == 3 * a.n_heads * a.head_dim == 3 * a.merge.in_features
        assert a.relative_position_bias_table.shape[1] == a.n_heads
    assert any(a.to_qkv.in_features < 16 for a in attns[:2])  # the embedding is cut too
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _maxvit())
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x))


def test_bias_table_keeps_the_kept_heads_columns() -> None:
    original = _maxvit()
    attn = _attentions(original)[0]
    with torch.no_grad():  # head 0 clearly the least important (its q / k / v rows and merge columns)
        attn.to_qkv.weight.view(3, 2, 8, -1)[:, 0] *= 1e-3
        attn.merge.weight[:, :8] *= 1e-3
    table = attn.relative_position_bias_table.detach().clone()
    pruned, _ = prune_channels(copy.deepcopy(original), _images()[:1], 0.5)
    new = _attentions(pruned)[0]
    assert new.n_heads == 1
    torch.testing.assert_close(new.relative_position_bias_table.detach(), table[:, 1:])


def test_embedding_cut_alone_still_runs() -> None:
    """Heads kept (ratio 0 on the attention), embedding pruned: the layer's forward must change too."""
    model, x = _maxvit(), _images()
    ratios = {"*attn_layer.1": 0.0}
    pruned, _ = prune_channels(model, x[:1], 0.5, ratios=ratios)
    attns = _attentions(pruned)
    assert [a.n_heads for a in attns] == [2, 2, 4, 4]
    assert all(type(a) is PrunedRelativePositionalMultiHeadAttention for a in attns)
    assert pruned(x).shape == (2, 10)
