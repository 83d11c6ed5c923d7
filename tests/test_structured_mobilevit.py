"""Shape arithmetic traced with concrete shapes, timm MobileViT blocks, linear attention, GroupNorm(1).

timm's MobileViT blocks compute patch counts with ``math.ceil`` on sizes and branch on them, so
plain fx kept them whole (1.14x for mobilevitv2_050); with concrete shapes they trace, their
``LinearSelfAttention`` inner channels and their GroupNorm(1) transformer width are pruned.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secateur import build_model, load_model, save_model
from secateur.structured import analyse, prune_channels
from structured_helpers import assert_equivalent, equivalence, n_params

timm = pytest.importorskip("timm")


class Patches(nn.Module):
    """MobileViT-style unfold / fold: sizes read from the input, arithmetic and a branch on them."""

    def __init__(self, c: int = 8, p: int = 2) -> None:
        super().__init__()
        self.p = p
        self.inner = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        new_h, new_w = math.ceil(h / self.p) * self.p, math.ceil(w / self.p) * self.p
        if new_h != h or new_w != w:
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        nh, nw = new_h // self.p, new_w // self.p
        x = x.reshape(b * c * nh, self.p, nw, self.p).transpose(1, 2)  # channels folded into dim 0
        x = x.reshape(b, c, nh * nw, self.p * self.p)
        x = self.inner(x)
        x = x.reshape(b * c * nh, nw, self.p, self.p).transpose(1, 2)
        return x.reshape(b, c, new_h, new_w)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Patches()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.block(self.conv1(x).relu())).mean((2, 3)))


def test_shape_arithmetic_traces_with_concrete_shapes_and_prunes_exactly() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    graph = analyse(Net(), x[:1])
    assert not graph.notes, graph.notes  # nothing kept whole, nothing locked
    assert graph.group("conv1").size == 8  # followed through both patch reshapes and the inner conv
    pruned, _plan, diff, scale = equivalence(Net(), x, 0.5)
    assert_equivalent(diff, scale)
    assert pruned.block.inner.in_channels == 4 and pruned(torch.randn(1, 3, 5, 5)).shape == (1, 4)


class LiteralWidth(Patches):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return x.reshape(b, 8, h, w)  # the width is a literal: channels must stay


def test_a_literal_width_still_locks() -> None:
    net = Net()
    net.block = LiteralWidth()
    graph = analyse(net, torch.randn(1, 3, 6, 6))
    assert not any(g.name == "conv1" for g in graph.groups)
    assert any("reshape" in u.op for u in graph.unfollowed)


def test_group_norm_with_one_group_prunes_channels_over_the_kept_ones() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(1, 8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 5, 5)
    assert analyse(model, x[:1]).group("0").size == 8
    pruned, plan = prune_channels(copy.deepcopy(model), x[:1], 0.5)
    keep = torch.tensor(plan.keep_out["0"])
    assert (pruned[1].num_groups, pruned[1].num_channels) == (1, 4)
    with torch.no_grad():  # the original, its norm taken over the kept channels
        y = model[0](x)[:, keep]
        y = F.group_norm(y, 1, model[1].weight[keep], model[1].bias[keep], model[1].eps).relu()
        ref = F.conv2d(y, model[3].weight[:, keep], model[3].bias)
        torch.testing.assert_close(pruned(x), ref)


def test_linear_self_attention_inner_channels_prune_exactly() -> None:
    from timm.models.mobilevit import LinearSelfAttention

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), LinearSelfAttention(8), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 4, 6)
    graph = analyse(model, x[:1])
    assert sorted(g.size for g in graph.groups) == [8, 8, 8], graph.notes  # in, inner, out: independent
    pruned, _plan, diff, scale = equivalence(copy.deepcopy(model), x, 0.5)
    assert_equivalent(diff, scale)
    attn = pruned[1]
    assert attn.embed_dim == 4 and attn.qkv_proj.out_channels == 9 and attn.out_proj.in_channels == 4


def test_mobilevitv2_prunes_past_torch_pruning_and_round_trips(tmp_path: Path) -> None:
    """Torch-Pruning reaches 2.81x on mobilevitv2_050 (bench/results/structured_timm.md)."""
    model = build_model("timm:mobilevitv2_050", input_shape=(3, 64, 64), num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    graph = analyse(model, x[:1])
    assert not any("fx cannot trace" in n for n in graph.notes), graph.notes
    before = n_params(model)
    pruned, _ = prune_channels(model, x[:1], 0.5)
    assert before / n_params(pruned) >= 2.81
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (2, 10)
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(again(x), out)


class _Either(nn.Module):
    """conv -> conv; with ``bake`` its forward folds the channels into a hard-coded view (locks them)."""

    def __init__(self, bake: bool) -> None:
        super().__init__()
        self.bake = bake
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        if self.bake:
            y = y.view(y.shape[0], 8, -1).view(y.shape)
        return self.b(y)


@pytest.mark.parametrize("order", ["baked-first", "free-first"])
def test_of_two_traces_the_analysis_keeps_the_one_that_frees_more_channels(order):
    """The concrete retry needs fewer opaque leaves but may follow less: the deeper analysis wins."""
    from secateur.structured.graph import _deepest
    from secateur.structured.trace import trace_model
    from secateur.structured.tracker import Tracker

    x = torch.randn(1, 3, 6, 6)
    baked, free = trace_model(_Either(True)), trace_model(_Either(False))
    traces = [(baked, [("a", "untraceable")]), (free, [])]
    if order == "free-first":
        traces.reverse()
    tracker = Tracker()
    gm, opaque = _deepest(_Either(False), traces, tracker, x)
    assert gm is free and opaque == []
    assert not any("whole" in note for note in tracker.notes)  # the other trace's notes are gone
    assert [g.size for g in tracker.finish().groups] == [8]
