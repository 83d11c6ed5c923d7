"""Structured pruning: dependency analysis, criteria, allocation, surgery, plans, masks (small models)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torchvision
from torch import nn

from secateur.errors import (
    ConfigError,
    SecateurError,
    UnknownNameError,
    UnsupportedModelError,
)
from secateur.io.storage import load_model, save_model
from secateur.structured import (
    GROUP_METHODS,
    Plan,
    analyse,
    apply_plan,
    plan_pruning,
    prune_channels,
)
from secateur.unstructured import kernel_masks, nm_masks
from secateur.unstructured.masks import apply_masks
from structured_helpers import assert_equivalent, equivalence, train_step

X = torch.randn(2, 3, 16, 16)


def _cbr(cin: int, cout: int, **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.a = _cbr(8, 8)
        self.b = _cbr(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        s = self.stem(x)
        y = self.b(self.a(s)) + s
        return self.head(y.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = _cbr(3, 6)
        self.right = _cbr(3, 10)
        self.mix = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8 * 16 * 16, 4)

    def forward(self, x):
        y = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(torch.flatten(self.mix(y), 1))


class Depthwise(nn.Module):
    def __init__(self, groups: int = 12) -> None:
        super().__init__()
        self.expand = _cbr(3, 12)
        self.dw = _cbr(12, 24, groups=groups)
        self.se1 = nn.Conv2d(24, 6, 1)
        self.se2 = nn.Conv2d(6, 24, 1)
        self.gn = nn.GroupNorm(4, 24)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        y = self.dw(self.expand(x))
        s = torch.sigmoid(self.se2(torch.relu(self.se1(nn.functional.adaptive_avg_pool2d(y, 1)))))
        y = self.gn(y * s)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class Shuffle(nn.Module):
    """Channel shuffle through a hard-coded view: the analysis cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _cbr(3, 8)
        self.b = _cbr(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.b(y).mean((2, 3)))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.block = Gate()

    def forward(self, x):
        return self.block(self.conv(x))


class Gate(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


# --------------------------------------------------------------------------- dependency analysis


def test_residual_add_couples_both_branches_into_one_group():
    graph = analyse(Residual(), X)
    names = {g.name: g for g in graph.groups}
    assert set(names) == {"stem.0", "a.0"}
    shared = names["stem.0"]
    assert shared.modules("out") == ["stem.0", "b.0"]
    assert {"stem.1", "b.1"} <= set(shared.modules("norm"))
    assert "head" in shared.modules("in")
    pruned, plan, diff, scale = equivalence(Residual(), X)
    assert_equivalent(diff, scale)
    assert plan.keep_out["stem.0"] == plan.keep_out["b.0"] == plan.keep_in["head"]
    assert pruned.head.out_features == 4


def test_concat_offsets_and_flatten_into_linear():
    pruned, plan, diff, scale = equivalence(Concat(), X)
    assert_equivalent(diff, scale)
    left, right = plan.keep_out["left.0"], plan.keep_out["right.0"]
    assert plan.keep_in["mix"] == left + [6 + i for i in right]
    assert pruned.mix.in_channels == 3 + 5
    kept = plan.keep_out["mix"]
    assert plan.keep_in["head"] == [c * 256 + i for c in kept for i in range(256)]


@pytest.mark.parametrize("groups", [12, 4])
def test_depthwise_grouped_se_and_groupnorm_stay_valid(groups):
    pruned, _plan, diff, scale = equivalence(Depthwise(groups), X, ratio=0.5)
    assert_equivalent(diff, scale)
    dw = pruned.dw[0]
    assert dw.groups < groups and dw.in_channels % dw.groups == 0 and dw.out_channels % dw.groups == 0
    assert dw.in_channels // dw.groups == 12 // groups
    assert pruned.gn.num_channels == dw.out_channels and pruned.gn.num_channels % pruned.gn.num_groups == 0
    assert pruned.gn.num_channels // pruned.gn.num_groups == 6
    assert pruned.se2.out_channels == dw.out_channels
    train_step(pruned, X, num_classes=4)


def test_unfollowable_reshape_locks_channels_but_model_still_prunes():
    graph = analyse(Shuffle(), X)
    assert "a.0" not in [m for g in graph.groups for m in g.modules("out")]
    assert any("view" in note for note in graph.notes)
    pruned, _plan, diff, scale = equivalence(Shuffle(), X)
    assert_equivalent(diff, scale)
    assert pruned.a[0].out_channels == 8 and pruned.b[0].out_channels == 4


def test_strict_mode_raises_naming_op_and_module_and_leaves_model():
    model = Shuffle()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError) as err:
        prune_channels(model, X, strict=True)
    message = str(err.value)
    assert "\n" not in message and "'view'" in message and "<root>" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.a[0].out_channels == 8


def test_vit_embedding_heads_and_mlp_hidden_are_pruned():
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=4)
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts it at zero: every output would be 0
    x = torch.randn(2, 3, 32, 32)
    graph = analyse(vit, x)
    assert [g.modules("out")[0] for g in graph.groups] == ["conv_proj", "encoder.layers.encoder_layer_0.self_attention",
                                                           "encoder.layers.encoder_layer_0.mlp.0"]
    pruned, _plan, diff, scale = equivalence(vit, x)
    assert_equivalent(diff, scale)
    assert pruned.encoder.layers[0].mlp[0].out_features == 16
    assert pruned.encoder.layers[0].self_attention.num_heads == 1
    assert pruned.hidden_dim == pruned.encoder.layers[0].self_attention.embed_dim == 8


def test_untraceable_model_raises_one_line_error_naming_module_and_leaves_model():
    model = DataDependent()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError) as err:
        prune_channels(model, X, strict=True)  # strict: no opaque fallback
    message = str(err.value)
    assert "\n" not in message and "'block'" in message and "unchanged" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UnsupportedModelError, match="<root>"):
        prune_channels(Gate(), X)  # the model's own forward cannot be traced


def test_an_untraceable_submodule_is_kept_whole_and_the_rest_is_pruned():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), Gate(), nn.Conv2d(6, 4, 3))
    graph = analyse(model, X)
    assert [g.name for g in graph.groups] == ["0"]  # the gate's input and output channels are kept
    assert "kept 3 whole: fx cannot trace inside it" in graph.notes
    pruned, _plan, diff, scale = equivalence(model, X)
    assert_equivalent(diff, scale)
    assert pruned[0].out_channels == 4 and pruned[2].out_channels == 6


def test_ignore_keeps_layer_intact_and_output_layer_is_never_pruned():
    graph = analyse(Residual(), X, ignore=["head"])  # intact: its inputs (the residual stream) too
    assert [g.name for g in graph.groups] == ["a.0"]
    model, plan = prune_channels(Residual(), X, ratio=0.5, ignore=["stem.*"])
    assert model.a[0].out_channels == 4 and model.stem[0].out_channels == 8
    assert model.head.out_features == 4 and "head" not in plan.keep_out


def test_analyse_does_not_change_the_model():
    model = Residual().train()
    before = copy.deepcopy(model.state_dict())
    analyse(model, X)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- criteria and allocation


def _two_layer() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_l1_and_bn_scale_keep_the_strongest_channels():
    model = _two_layer()
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(8.0)[:, None, None, None].expand(8, 3, 1, 1))
        model[3].weight.fill_(0.01)
        model[1].weight.copy_(torch.tensor([8.0, 7, 6, 5, 4, 3, 2, 1]))
    graph = analyse(model, X)
    assert plan_pruning(model, graph, ratio=0.5, method="l1").keep_out["0"] == [4, 5, 6, 7]
    assert plan_pruning(model, graph, ratio=0.5, method="l2").keep_out["0"] == [4, 5, 6, 7]
    assert plan_pruning(model, graph, ratio=0.5, method="bn-scale").keep_out["0"] == [0, 1, 2, 3]


def test_taylor_needs_batches_and_random_is_reproducible():
    model = _two_layer()
    graph = analyse(model, X)
    with pytest.raises(ConfigError, match="batches"):
        plan_pruning(model, graph, ratio=0.5, method="taylor")
    plan = plan_pruning(model, graph, ratio=0.5, method="taylor", batches=[(X, torch.tensor([0, 1]))])
    assert len(plan.keep_out["0"]) == 4
    assert all(p.grad is None for p in model.parameters())
    r1 = plan_pruning(model, graph, ratio=0.5, method="random", generator=torch.Generator().manual_seed(3))
    r2 = plan_pruning(model, graph, ratio=0.5, method="random", generator=torch.Generator().manual_seed(3))
    assert r1.keep_out == r2.keep_out
    assert {"l1", "l2", "bn-scale", "taylor", "random"} <= set(GROUP_METHODS.names())  # the documented ones
    with pytest.raises(UnknownNameError):
        plan_pruning(model, graph, ratio=0.5, method="nope")


def test_min_channels_round_to_and_per_layer_ratios():
    model = Depthwise()
    graph = analyse(model, X)
    sizes = {g.name: g.size for g in graph.groups}
    plan = plan_pruning(model, graph, ratio=0.9, min_channels=3, method="l1")
    assert all(kept >= min(3, size) for kept, size in plan.info["groups"].values())
    plan = plan_pruning(model, graph, ratio=0.5, round_to=4, method="l1")
    assert all(kept % 4 == 0 or kept == size for kept, size in plan.info["groups"].values())
    plan = plan_pruning(model, graph, ratio=0.5, ratios={"se1": 0.0}, method="l1")
    assert plan.info["groups"]["se1"] == [sizes["se1"], sizes["se1"]]
    with pytest.raises(ConfigError):
        plan_pruning(model, graph, ratio=1.5)
    with pytest.raises(ConfigError):
        plan_pruning(model, graph, ratio=0.5, scope="everywhere")


def test_global_scope_ranks_across_groups():
    model = Residual()
    with torch.no_grad():  # make group "a.0" much weaker than the others
        model.a[0].weight.mul_(1e-3)
        model.b[0].weight[:, :].mul_(1.0)
    graph = analyse(model, X)
    local = plan_pruning(model, graph, ratio=0.25, method="l1")
    glob = plan_pruning(model, graph, ratio=0.25, method="l1", scope="global")
    assert local.info["groups"]["a.0"][0] == 6
    total = sum(s for _, s in glob.info["groups"].values())
    kept = sum(k for k, _ in glob.info["groups"].values())
    assert kept == total - total // 4


# --------------------------------------------------------------------------- surgery, plans, saving


def test_apply_plan_is_atomic_on_invalid_plans():
    model = Residual()
    before = copy.deepcopy(model.state_dict())
    bad = Plan(keep_out={"stem.0": [0, 1, 2, 3], "stem.1": [0, 1, 2, 3], "b.0": [0, 99]})
    with pytest.raises(ConfigError, match=r"b\.0"):
        apply_plan(model, bad)
    inconsistent = Plan(keep_out={"stem.0": [0, 1, 2, 3]})  # BN and consumers not rewired
    with pytest.raises(UnsupportedModelError, match="unchanged"):
        apply_plan(model, inconsistent, X)
    assert model.stem[0].out_channels == 8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="nope"):
        apply_plan(model, Plan(keep_out={"nope": [0]}))


def test_plan_json_round_trip_and_bad_json():
    _model, plan = prune_channels(Residual(), X, ratio=0.5)
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan
    with pytest.raises(ConfigError):
        Plan.from_json({"format": "something else"})


def test_save_load_round_trip_with_custom_builder(tmp_path):
    model, plan = prune_channels(Depthwise(), X, ratio=0.5)
    save_model(model, tmp_path / "p", {"model": {"name": "depthwise", "args": {"groups": 12}}})
    loaded, meta = load_model(tmp_path / "p", build=lambda name, groups: Depthwise(groups))
    assert meta["plan"] == plan.to_json() and not loaded.training
    model.eval()
    assert torch.equal(model(X), loaded(X))
    with pytest.raises(SecateurError):
        load_model(tmp_path / "missing", build=lambda name, groups: Depthwise(groups))


def test_prune_channels_copy_leaves_original():
    original = Residual()
    pruned, _ = prune_channels(original, X, ratio=0.5, inplace=False)
    assert original.stem[0].out_channels == 8 and pruned.stem[0].out_channels == 4


# --------------------------------------------------------------------------- masks


def test_kernel_masks_remove_whole_kernels():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    masks = kernel_masks(model, 0.5)
    for mask in masks.values():
        per_kernel = mask.reshape(mask.shape[0], mask.shape[1], -1)
        assert (per_kernel.all(-1) | ~per_kernel.any(-1)).all()  # a kernel is all kept or all gone
        assert per_kernel.all(-1).sum() == mask.shape[0] * mask.shape[1] // 2
    apply_masks(model, masks)
    assert (model[2].weight == 0).sum() == 4 * 8 * 9 // 2


def test_nm_masks_are_two_of_four():
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 6), nn.Linear(6, 3))
    masks = nm_masks(model, 2, 4)
    assert set(masks) == {"0.weight", "2.weight"}  # 6 inputs do not divide into groups of 4
    conv = masks["0.weight"].permute(0, 2, 3, 1).reshape(-1, 4)
    assert (conv.sum(1) == 2).all()
    w = model[2].weight.detach().abs().reshape(-1, 4)
    kept = masks["2.weight"].reshape(-1, 4)
    assert (kept.sum(1) == 2).all()
    assert ((w * kept).sum(1) >= (w * ~kept).sum(1)).all()
    with pytest.raises(ConfigError):
        nm_masks(model, 4, 2)


def test_pruned_model_is_plain_and_exportable():
    model, _plan = prune_channels(Residual(), X, ratio=0.5)
    assert {type(m) for m in model.modules()} == {type(m) for m in Residual().modules()}
    assert all("mask" not in name and "orig" not in name for name, _ in model.named_parameters())
    exported = torch.export.export(model.eval(), (X,))
    assert torch.allclose(exported.module()(X), model(X))
