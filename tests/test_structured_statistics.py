"""Statistics over the channels and channel shuffles (issue 14: ops the analysis follows).

GlobalResponseNorm (ConvNeXt-V2) divides each channel's spatial norm by the mean of those norms
over the channels: a statistic, followed like a LayerNorm (the pruned model takes it over the kept
channels only). ShuffleNet's channel shuffle is a permutation, followed when every group keeps the
same positions.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from timm.layers.grn import GlobalResponseNorm
from torch import nn
from torchvision.models.shufflenetv2 import InvertedResidual, channel_shuffle

from secateur import load_model, save_model
from secateur.structured import analyse, apply_plan, plan_pruning, prune_channels
from secateur.structured.tracker import param_key
from secateur.zoo.models import build_model
from structured_helpers import (
    assert_equivalent,
    calibrate_bn,
    equivalence,
    kept_layer_norms,
    n_params,
    train_step,
    zero_pruned,
)


@contextmanager
def kept_grns(model: nn.Module, plan) -> Iterator[None]:
    """While active, each GlobalResponseNorm the plan prunes runs on its kept channels only (its
    channel mean over them) and outputs 0 at the removed ones: with zero_pruned, what a pruned one equals."""
    originals = {}
    for path, m in model.named_modules():
        keep = plan.keep_out.get(param_key(f"{path}.weight", 0))
        if isinstance(m, GlobalResponseNorm) and keep is not None:
            originals[m] = m.forward
            m.forward = _on_kept(m, torch.tensor(keep))
    try:
        yield
    finally:
        for m, forward in originals.items():
            m.forward = forward


def _on_kept(m: GlobalResponseNorm, keep: torch.Tensor):
    sub = GlobalResponseNorm(len(keep), m.eps, channels_last=m.channel_dim == -1)
    sub.weight.data, sub.bias.data = m.weight.data[keep], m.bias.data[keep]

    def forward(x):
        y = torch.zeros_like(x)
        y.index_copy_(m.channel_dim % x.dim(), keep, sub(x.index_select(m.channel_dim, keep)))
        return y
    return forward


class GrnNet(nn.Module):
    """ConvNeXt-V2's MLP in both of timm's layouts: 1x1 convs (channels first) and Linear (channels last)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)
        self.grn1 = GlobalResponseNorm(16, channels_last=False)
        self.lin1, self.grn2, self.lin2 = nn.Linear(8, 12), GlobalResponseNorm(12), nn.Linear(12, 8)
        self.head = nn.Linear(8, 10)
        for grn in (self.grn1, self.grn2):  # timm starts them at zero (the identity); make them matter
            nn.init.normal_(grn.weight)
            nn.init.normal_(grn.bias)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.fc2(self.grn1(F.gelu(self.fc1(x))))
        y = x.permute(0, 2, 3, 1)
        y = y + self.lin2(self.grn2(F.gelu(self.lin1(y))))
        return self.head(y.mean((1, 2)))


def test_grn_channels_are_pruned_and_equal_the_kept_channel_reference():
    torch.manual_seed(0)
    model = GrnNet().eval()
    x = torch.randn(3, 3, 8, 8)
    graph = analyse(model, x[:1])
    assert graph.unfollowed == []
    plan = plan_pruning(model, graph, ratio=0.5, method="l1")
    pruned = apply_plan(copy.deepcopy(model), plan, x[:1])
    assert pruned.fc1.out_channels == 8 and pruned.grn1.weight.shape == pruned.grn1.bias.shape == (8,)
    assert pruned.lin1.out_features == 6 and pruned.grn2.weight.shape == (6,)
    assert pruned.stem.out_channels == 4  # the residual stream too: the GRNs lock nothing
    zero_pruned(model, plan)
    with torch.no_grad():
        out, zeroed_only = pruned(x), model(x)
        with kept_grns(model, plan):
            want = model(x)
    assert_equivalent((out - want).abs().max().item(), want.abs().max().item())
    # the channel mean divides by the kept count, not the full one: retrain after pruning
    assert (out - zeroed_only).abs().max() > 1e-3


class Normalised(nn.Module):
    """A sum and norms over the channels used as normalisers: exact once removed channels are zero."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 6, 3)
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        x = F.normalize(self.a(x), dim=1)
        x = self.b(x)
        x = x / (x.norm(p=2, dim=1, keepdim=True) + 1e-3) + x / (x.abs().sum(1, keepdim=True) + 1).sqrt()
        x = self.c(x)
        x = x * torch.linalg.vector_norm(x, 2, dim=(2, 3), keepdim=True)  # per channel: keeps its labels
        return self.head(x.mean((2, 3)))


def test_sums_and_norms_over_the_channels_are_followed_exactly():
    torch.manual_seed(0)
    model = Normalised()
    x = torch.randn(3, 3, 12, 12)
    assert analyse(model, x[:1]).unfollowed == []
    pruned, _, diff, scale = equivalence(model, x, ratio=0.5)
    assert_equivalent(diff, scale)
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.c.out_channels) == (4, 4, 3)


class OtherUses(nn.Module):
    """Channel statistics that are not broadcast back onto their channels keep them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.spatial, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(2, 1, 3, padding=1), nn.Conv2d(8, 6, 3)
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        x = self.a(x)  # CBAM's spatial attention: channel mean and max concatenated into a conv
        x = x * torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        x = self.b(x)
        return self.head(x.mean((2, 3))) + x.mean(1, keepdim=True).mean((1, 2, 3))[:, None]


def test_a_statistic_used_otherwise_keeps_its_channels_and_is_reported():
    graph = analyse(OtherUses(), torch.randn(1, 3, 12, 12))
    assert graph.groups == []
    ops = {(u.op, u.path) for u in graph.unfollowed}
    # cat and mean: a statistic reaches them; amax: no statistic; mul: the one-channel gate
    assert ops == {("cat", "<root>"), ("amax", "<root>"), ("mean", "<root>"), ("mul", "<root>")}
    why = {u.op: u.why for u in graph.unfollowed}
    assert "statistic reaches" in why["cat"] and "statistic reaches" in why["mean"]


class Shuffle(nn.Module):
    """Two branches concatenated and shuffled, in both group layouts (groups first or per group first)."""

    def __init__(self, groups_first: bool = True) -> None:
        super().__init__()
        self.groups_first = groups_first
        self.left, self.right = nn.Conv2d(3, 6, 3), nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(12)
        self.mid = nn.Conv2d(12, 12, 3, groups=12)
        self.out = nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.cat([self.left(x), self.right(x)], 1)
        if self.groups_first:
            x = channel_shuffle(x, 2)
        else:  # view(B, C // 3, 3, H, W): three consecutive channels go together
            b, c, h, w = x.size()
            x = x.view(b, -1, 3, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = self.out(F.relu(self.mid(self.bn(x))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("groups_first", [True, False])
def test_a_channel_shuffle_is_followed_exactly(groups_first):
    torch.manual_seed(0)
    model = Shuffle(groups_first)
    x = torch.randn(3, 3, 10, 10)
    graph = analyse(model, x[:1])
    assert graph.unfollowed == []
    group = graph.group("left")
    if groups_first:  # position j of the left half goes with position j of the right half
        assert group.modules("out") == ["left", "right", "mid"] and group.size == 6
    else:  # three consecutive channels go together: left's 6 channels are 2 groups of 3
        assert group.modules("out") == ["left", "mid"] and group.size == 2
    pruned, plan, diff, scale = equivalence(model, x, ratio=0.5)
    assert_equivalent(diff, scale)
    assert pruned.left.out_channels == pruned.right.out_channels
    assert pruned.mid.in_channels == 2 * pruned.left.out_channels
    if groups_first:  # the same positions in both halves
        assert plan.keep_out["left"] == plan.keep_out["right"]
    else:
        assert len(plan.keep_out["left"]) % 3 == 0 and len(plan.keep_out["right"]) % 3 == 0


def test_a_shuffle_whose_sizes_are_all_hard_coded_keeps_its_channels():
    class Fixed(Shuffle):
        def forward(self, x):
            x = torch.cat([self.left(x), self.right(x)], 1)
            b, _, h, w = x.size()
            x = x.view(b, 2, 6, h, w).transpose(1, 2).reshape(b, -1, h, w)
            return self.head(self.out(self.mid(self.bn(x))).mean((2, 3)))

    graph = analyse(Fixed(), torch.randn(1, 3, 10, 10))
    assert [(u.op, u.channels) for u in graph.unfollowed] == [("view", 12)]
    assert [g.name for g in graph.groups] == ["out"]


def test_a_split_into_groups_that_is_not_merged_back_keeps_its_channels():
    class Heads(Shuffle):  # e.g. attention heads: the groups meet in a matmul, not in a reshape
        def forward(self, x):
            x = torch.cat([self.left(x), self.right(x)], 1)
            b, c, h, w = x.size()
            q = x.view(b, 2, c // 2, h * w)
            return self.head((q @ q.transpose(-1, -2)).mean(1)[:, :, :2].flatten(1)[:, :8])

    graph = analyse(Heads(), torch.randn(1, 3, 10, 10))
    assert [(u.op, u.channels) for u in graph.unfollowed] == [("view", 12)]
    assert graph.groups == []


def test_shufflenet_downsampling_block_prunes_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), InvertedResidual(8, 16, 2), nn.Conv2d(16, 8, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    x = torch.randn(3, 3, 16, 16)
    assert analyse(model, x[:1]).unfollowed == []
    pruned, _, diff, scale = equivalence(model, x, ratio=0.5)
    assert_equivalent(diff, scale)
    assert pruned[1].branch1[2].out_channels == pruned[1].branch2[5].out_channels == 4


def test_torchvision_shufflenet_follows_its_shuffles_trains_and_saves(tmp_path):
    torch.manual_seed(0)
    model = build_model("torchvision:shufflenet_v2_x0_5", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    before = n_params(model)
    graph = analyse(model, x[:1])
    assert not [u for u in graph.unfollowed if u.op in ("view", "transpose")]
    prune_channels(model, x[:1], ratio=0.5)
    assert n_params(model) < before
    calibrate_bn(model, x)
    save_model(model, tmp_path / "m")
    again, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    train_step(again, x)


def test_timm_convnextv2_prunes_as_deep_as_torch_pruning_exactly_and_saves(tmp_path):
    torch.manual_seed(0)
    model = build_model("timm:convnextv2_atto", num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, GlobalResponseNorm):
            nn.init.normal_(m.weight, std=0.1)
            nn.init.normal_(m.bias, std=0.1)
    x = torch.randn(2, 3, 64, 64)
    before = n_params(model)
    graph = analyse(model, x[:1])
    assert graph.unfollowed == []
    plan = plan_pruning(model, graph, ratio=0.5, method="l1")
    pruned = apply_plan(copy.deepcopy(model), plan, x[:1])
    assert before / n_params(pruned) >= 3.3  # Torch-Pruning: 3.57x with its 1000-class head
    zero_pruned(model, plan)
    with torch.no_grad(), kept_layer_norms(model, plan), kept_grns(model, plan):
        want = model(x)
    with torch.no_grad():
        out = pruned(x)
    assert_equivalent((out - want).abs().max().item(), want.abs().max().item())
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))
    train_step(again, x)
