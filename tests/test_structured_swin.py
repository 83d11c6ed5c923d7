"""torchvision Swin Transformers (V1 and V2) pruned across their stages.

Patch merging (torchvision's fx-wrapped ``_patch_merging_pad``: four strided spatial slices of
one tensor concatenated on the channels) carries each stage channel four times, so a stage's
width is one group with the patch merging's LayerNorm(4C) and reduction columns. V2's attention
(cosine attention with a per-head logit scale, a position-bias MLP with one row per head) is a
registered layout. Each pruned model equals the original with the removed structures zeroed and
its pruned LayerNorms over the kept channels, trains, and survives a save / load round trip.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import fx, nn
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

from secateur import load_model, save_model
from secateur.analysis.metrics import count_macs
from secateur.structured import analyse, prune_channels
from secateur.structured.attention import PrunedShiftedWindowAttention
from secateur.structured.swin import PrunedShiftedWindowAttentionV2
from structured_helpers import assert_equivalent, equivalence, n_params, train_step

V2 = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2}


def _swin(version: int) -> nn.Module:
    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[2, 2],
                           num_classes=10, **(V2 if version == 2 else {})).eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("version", [1, 2])
def test_patch_merging_carries_each_stage_channel_four_times(version: int) -> None:
    graph = analyse(_swin(version), _images()[:1])
    assert graph.unfollowed == [], graph.notes
    stage = graph.group("features.0.0")
    assert stage.size == 16
    merged = [("features.2.reduction", "in")] + ([("features.2.norm", "norm")] if version == 1 else [])
    for module, role in merged:  # V2 normalises after the reduction, V1 before it
        member = next(m for m in stage.members if (m.module, m.role) == (module, role))
        channel = member.channel[member.positions.argsort()]
        assert len(channel) == 64
        assert torch.equal(channel.reshape(4, 16), channel[:16].expand(4, 16))  # c, C+c, 2C+c, 3C+c together
    assert graph.group("features.2.reduction").size == 32


@pytest.mark.parametrize("version", [1, 2])
def test_swin_pruned_exactly_smaller_trains_and_reloads(version: int, tmp_path: Path) -> None:
    original, x = _swin(version), _images()
    pruned, _plan, diff, scale = equivalence(copy.deepcopy(original), x, 0.5)
    assert_equivalent(diff, scale)
    assert scale > 1e-2
    assert type(pruned) is SwinTransformer
    attn = pruned.features[1][0].attn
    assert type(attn) is (PrunedShiftedWindowAttention if version == 1 else PrunedShiftedWindowAttentionV2)
    assert attn.num_heads == 1 and attn.qkv.in_features == 8
    merge = pruned.features[2]
    assert (merge.reduction.in_features, merge.reduction.out_features) == (32, 16)
    assert merge.norm.normalized_shape == ((32,) if version == 1 else (16,))
    assert pruned.features[3][0].attn.num_heads == 2 and pruned.head.in_features == 16
    assert n_params(pruned) < 0.5 * n_params(original)
    assert count_macs(pruned, (3, 32, 32)) < 0.5 * count_macs(original, (3, 32, 32))
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _swin(version))
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x))
    train_step(pruned, x)


def test_swin_v2_heads_keep_their_logit_scale_and_position_bias_rows() -> None:
    original = _swin(2)
    attn = original.features[1][0].attn
    with torch.no_grad():  # head 0 of the first attention clearly the least important
        attn.qkv.weight.view(3, 2, 8, 16)[:, 0] *= 1e-3
        attn.proj.weight[:, :8] *= 1e-3
        attn.logit_scale.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1))
    rows = attn.cpb_mlp[2].weight.detach().clone()
    pruned, _ = prune_channels(copy.deepcopy(original), _images()[:1], 0.5, ratios={"features.0.0": 0.0,
                                                                                     "features.*.reduction": 0.0})
    new = pruned.features[1][0].attn
    assert new.num_heads == 1 and new.logit_scale.shape == (1, 1, 1) and new.logit_scale.item() == 2.0
    torch.testing.assert_close(new.cpb_mlp[2].weight.detach(), rows[1:])
    assert new.get_relative_position_bias().shape == (1, 1, 4, 4)


@pytest.mark.parametrize("version", [1, 2])
def test_stage_widths_alone_pruned_exactly(version: int) -> None:
    """Heads kept, stage widths halved: the attention's own forward must not tie heads to the width."""
    pruned, _plan, diff, scale = equivalence(_swin(version), _images(), 0.5,
                                             ratios={"features.*.qkv": 0.0, "features.*.mlp.0": 0.0})
    assert_equivalent(diff, scale)
    attn = pruned.features[1][0].attn
    assert attn.num_heads == 2 and attn.qkv.in_features == 8 and "Pruned" in type(attn).__name__


def _timm_swin() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    torch.manual_seed(0)
    return TimmSwin(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=2,
                    num_classes=10).eval()


def test_timm_swin_heads_and_stage_widths_pruned_exactly(tmp_path: Path) -> None:
    """timm's patch merging reshapes (no wrapped function), its shifted windows roll the spatial dims,
    and its WindowAttention reads num_heads: heads and every stage width go, exactly."""
    original, x = _timm_swin(), _images()
    assert analyse(original, x[:1]).unfollowed == []
    pruned, _plan, diff, scale = equivalence(copy.deepcopy(original), x, 0.5)
    assert_equivalent(diff, scale)
    assert scale > 1e-2
    attn = pruned.layers[0].blocks[1].attn
    assert (attn.num_heads, attn.qkv.out_features, attn.relative_position_bias_table.shape[1]) == (1, 24, 1)
    merge = pruned.layers[1].downsample
    assert (merge.norm.normalized_shape, merge.reduction.in_features, merge.reduction.out_features) == ((32,), 32, 16)
    assert n_params(pruned) < 0.5 * n_params(original)
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _timm_swin())
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x))
    train_step(pruned, x)


class _Rolled(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.roll(self.a(x), shifts=(1,) * len(self.dims), dims=self.dims)).mean((2, 3))


def test_roll_keeps_channels_unless_it_shifts_them() -> None:
    x = torch.randn(2, 3, 5, 5)
    pruned, _plan, diff, scale = equivalence(_Rolled((2, -1)).eval(), x, 0.5)
    assert_equivalent(diff, scale)
    assert pruned.a.out_channels == 3
    graph = analyse(_Rolled((1, 2)).eval(), x[:1])
    assert [u.op for u in graph.unfollowed] == ["roll"]


# --------------------------------------------------------------------------- fx-wrapped functions, generally


def _twice(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.relu()], -1)


def _gated(x: torch.Tensor) -> torch.Tensor:
    if x.sum() > 0:  # data-dependent: fx cannot trace this body
        return x
    return -x


fx.wrap("_twice")
fx.wrap("_gated")


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_twice(self.a(x)))


class _Gated(_Twice):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cat([_gated(self.a(x))] * 2, -1))


def test_a_wrapped_function_is_followed_through_its_body() -> None:
    model = _Twice().eval()
    x = torch.randn(3, 4)
    graph = analyse(model, x[:1])
    assert graph.unfollowed == []
    pruned, _plan, diff, scale = equivalence(model, x, 0.5)
    assert_equivalent(diff, scale)
    assert (pruned.a.out_features, pruned.b.in_features) == (3, 6)


def test_a_wrapped_function_fx_cannot_trace_keeps_its_channels() -> None:
    graph = analyse(_Gated().eval(), torch.randn(1, 4))
    assert [u.op for u in graph.unfollowed] == ["_gated"]
    assert all("a" not in g.modules("out") for g in graph.groups)
