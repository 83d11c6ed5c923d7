"""Structured pruning follows parameters, not module types (issue 14, items 1-3).

Small models written here mimic other libraries' layers: a BatchNorm subclass that calls
F.batch_norm itself (timm's BatchNormAct2d), a squeeze-excitation gate and a layer scale the
tracer sees as attributes, F.linear on a module's own parameters, a ResNeXt-style grouped conv,
and a ConvNeXt block whose channels reach LayerNorms.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from secateur.analysis.summary import unfollowed_rows
from secateur.app.cli import main, structure_line
from secateur.report import results_markdown
from secateur.structured import analyse, apply_plan, plan_pruning
from secateur.structured.tracker import Unfollowed
from structured_helpers import (
    assert_equivalent,
    calibrate_bn,
    equivalence,
    kept_layer_norms,
    n_params,
    zero_pruned,
)

X = torch.randn(4, 3, 16, 16)


class BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm2d subclass whose forward calls F.batch_norm, then acts."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(x)


class SameConv(nn.Conv2d):
    """A subclass that keeps Conv2d's forward: followed as a conv module."""


class SE(nn.Module):
    """timm-style squeeze-excitation: the gate is a method call on the reduced branch."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        s = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * s.sigmoid()


class Scaled(nn.Module):
    """Gates the tracer sees as attributes: a layer scale and a sigmoid of a learned vector."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.gate = nn.Parameter(torch.randn(c, 1, 1))

    def forward(self, x):
        return x * self.gamma.reshape(1, -1, 1, 1) * torch.sigmoid(self.gate)


class FLinear(nn.Module):
    """A linear layer that is no nn.Linear: its own parameters through F.linear."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i) / i ** 0.5)
        self.bias = nn.Parameter(torch.randn(o))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class GeluLinear(nn.Linear):
    """An nn.Linear subclass with its own forward (F.linear on its parameters, then GELU)."""

    def forward(self, x):
        return F.gelu(F.linear(x, self.weight, self.bias))


class TimmNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn1 = SameConv(3, 16, 3, padding=1), BNAct(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1), BNAct(24)
        self.se, self.scale = SE(24), Scaled(24)
        self.fc1, self.fc2 = FLinear(24, 32), GeluLinear(32, 20)
        self.head = nn.Linear(20, 10)

    def forward(self, x):
        x = self.bn1(self.stem(x))
        x = self.scale(self.se(self.bn2(self.conv2(x))))
        return self.head(self.fc2(self.fc1(x.mean((2, 3)))))


def test_functional_norms_gates_and_linears_are_pruned_exactly():
    torch.manual_seed(0)
    model = TimmNet()
    graph = analyse(model, X[:1])
    assert graph.unfollowed == []
    pruned, plan, diff, scale = equivalence(model, X, ratio=0.5)
    assert_equivalent(diff, scale)
    assert pruned.stem.out_channels == pruned.bn1.num_features == pruned.conv2.in_channels == 8
    assert pruned.conv2.out_channels == pruned.bn2.num_features == pruned.bn2.running_mean.shape[0] == 12
    assert pruned.se.fc2.out_channels == pruned.scale.gamma.shape[0] == pruned.scale.gate.shape[0] == 12
    assert tuple(pruned.fc1.weight.shape) == (16, 12) and pruned.fc1.bias.shape == (16,)
    assert (pruned.fc2.in_features, pruned.fc2.out_features) == (16, 10) == tuple(pruned.fc2.weight.shape[::-1])
    assert pruned.head.out_features == 10
    assert "scale.gamma@0" in plan.keep_out and "fc1.weight@1" in plan.keep_out


class Grouped(nn.Module):
    """A ResNeXt bottleneck: 1x1, 3x3 with 4 groups, 1x1, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.c(self.b(self.a(x))))
        return self.head(x.mean((2, 3)))


def test_grouped_conv_loses_the_same_channels_in_every_group():
    torch.manual_seed(0)
    graph = analyse(Grouped(), X[:1])
    assert graph.group("a.0").size == 4  # 16 inputs of b, 4 per group: one channel = a position in every group
    pruned, plan, diff, scale = equivalence(Grouped(), X, ratio=0.5, method="l1")
    assert_equivalent(diff, scale)
    conv = pruned.b[0]
    assert conv.groups == 4 and conv.in_channels == conv.out_channels == 8
    assert tuple(conv.weight.shape) == (8, 2, 3, 3)  # a quarter of the weights
    kept = plan.keep_in["b.0"]
    assert len({i % 4 for i in kept}) == 2 and all(len([i for i in kept if i // 4 == g]) == 2 for g in range(4))


class LayerNorm2d(nn.LayerNorm):
    """torchvision's / timm's LayerNorm2d: channels-first input, F.layer_norm after a permute."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return x + self.layer_scale * y


class ConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16, eps=1e-6)
        self.blocks = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.norm, self.head = LayerNorm2d(16), nn.Linear(16, 10)

    def forward(self, x):
        x = self.norm(self.blocks(self.stem_norm(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_layernorm_channels_are_pruned_and_equal_the_kept_channel_reference():
    torch.manual_seed(0)
    model = ConvNeXt().eval()
    x = torch.randn(3, 3, 32, 32)
    graph = analyse(model, x[:1])
    assert graph.unfollowed == []
    plan = plan_pruning(model, graph, ratio=0.5, method="l1")
    pruned = apply_plan(copy.deepcopy(model), plan, x[:1])
    zero_pruned(model, plan)
    with torch.no_grad():
        out, zeroed_only = pruned(x), model(x)
        with kept_layer_norms(model, plan):  # the reference: LayerNorms over the kept channels only
            want = model(x)
    assert_equivalent((out - want).abs().max().item(), want.abs().max().item())
    assert (out - zeroed_only).abs().max() > 1e-3  # the statistics did change: retrain after pruning
    assert pruned.stem.out_channels == 8 and pruned.stem_norm.normalized_shape == (8,)
    block = pruned.blocks[0]
    assert block.norm.normalized_shape == (8,) and tuple(block.norm.weight.shape) == (8,)
    assert block.dw.groups == block.dw.in_channels == 8 and block.layer_scale.shape == (8, 1, 1)
    assert (block.fc1.in_features, block.fc1.out_features, block.fc2.out_features) == (8, 32, 8)
    assert pruned.head.in_features == 8 and pruned.norm.bias.shape == (8,)


class Erf(nn.Module):
    def forward(self, x):
        return torch.erf(x)


class Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.odd = nn.Conv2d(3, 8, 3), Erf()
        self.conv2, self.conv3 = nn.Conv2d(8, 6, 3), nn.Conv2d(6, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x + self.odd(x))  # the add is not reported again: erf is what lost the channels
        return self.head(F.relu(self.conv3(x)).mean((2, 3)))


def test_an_op_the_analysis_cannot_follow_is_reported_with_its_path_and_channels():
    graph = analyse(Unknown(), X[:1])
    assert graph.unfollowed == [Unfollowed("erf", "odd", 8, graph.unfollowed[0].why)]
    assert "erf" in graph.unfollowed[0].why
    assert [g.name for g in graph.groups] == ["conv2", "conv3"]  # the rest still prunes
    assert "kept 8 channels" in str(graph.unfollowed[0])


def test_parameters_read_by_an_unfollowed_op_keep_their_size():
    class Leaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.scale = nn.Parameter(torch.ones(8, 1, 1))
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = self.conv(x) * self.scale
            return self.head(x.mean((2, 3))) + torch.erf(self.scale).sum()

    graph = analyse(Leaky(), X[:1])
    assert graph.groups == []


# (model, parameter ratio Torch-Pruning reaches at 50% of channels, L1, local; bench/structured.py)
TORCH_PRUNING = {"convnext_tiny": 3.84, "resnext50_32x4d": 3.68, "regnet_y_400mf": 3.60}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCH_PRUNING))
def test_torchvision_prunes_as_deep_as_torch_pruning(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    before = n_params(model)
    graph = analyse(model, x)
    assert graph.unfollowed == []
    apply_plan(model, plan_pruning(model, graph, ratio=0.5, method="l1"), x)
    assert before / n_params(model) >= TORCH_PRUNING[name]
    calibrate_bn(model, torch.randn(2, 3, 64, 64))
    assert model(x).shape == (1, 1000)


def test_info_and_the_run_report_name_the_unfollowed_ops(capsys):
    line = structure_line(Unknown(), (3, 16, 16))
    assert "erf in odd: 8 channels" in line and "2 prunable groups" in line
    assert main(["info", "lenet5"]) == 0
    assert "structured pruning: 3 prunable groups" in capsys.readouterr().out
    rows = unfollowed_rows(Unknown(), (3, 16, 16))
    assert rows == [{"op": "erf", "path": "odd", "channels": 8}]
    md = results_markdown({**_results(), "unfollowed": rows}, [])
    assert "## Channels kept at ops the analysis does not follow" in md and "| erf | odd | 8 |" in md


def _results() -> dict:
    scores = {"val": {"accuracy": 0.9}, "test": {"accuracy": 0.9}}
    return {"baseline": scores, "pruned": scores, "params": {"baseline": 10, "total": 5, "nonzero": 5},
            "compression": 2.0, "layers": [], "granularity": "channel"}


class _LinearNorm(nn.Module):
    """LeViT's Linear + BatchNorm1d: the norm over the flattened tokens, then ``reshape_as`` the input."""

    def __init__(self, baked: bool = False) -> None:
        super().__init__()
        self.baked = baked
        self.patch = nn.Conv2d(3, 4, 1)
        self.a, self.bn, self.b = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)
        self.register_buffer("fixed", torch.zeros(2, 16, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(self.patch(x).flatten(2).transpose(1, 2))
        z = self.bn(y.flatten(0, 1)).reshape_as(self.fixed if self.baked else y)
        return self.b(torch.relu(z)).mean(1)


def test_reshape_as_takes_the_other_tensors_sizes():
    """``reshape_as(y)`` follows y's channels; the shape of an unlabelled tensor is hard-coded."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    graph = analyse(_LinearNorm(), x)
    assert graph.unfollowed == [] and sorted(g.size for g in graph.groups) == [4, 8]
    pruned, _, diff, scale = equivalence(_LinearNorm().eval(), x)
    assert_equivalent(diff, scale)
    assert pruned.a.out_features == pruned.bn.num_features == pruned.b.in_features == 4
    assert [g.size for g in analyse(_LinearNorm(baked=True), x).groups] == [4]  # sized like a buffer: kept


class _TokenMlp(nn.Module):
    """A model whose input is already (batch, tokens, features): Linear layers on the last dim."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).mean(1))


def test_a_token_input_model_prunes_its_features():
    """The input's dim 1 (tokens, not channels) is kept, and the Linear layers' features still go."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)
    assert sorted(g.size for g in analyse(_TokenMlp(), x).groups) == [6, 8]
    pruned, _, diff, scale = equivalence(_TokenMlp().eval(), x)
    assert_equivalent(diff, scale)
    assert (pruned.a.out_features, pruned.b.out_features, pruned.head.out_features) == (4, 3, 3)
