"""timm's ViT attention heads pruned with the MLP neurons and the embedding (secateur.structured.attention_timm).

Each model is a tiny timm ViT / DeiT built from its config (no weights). The pruned model equals the
original with the removed heads, neurons and embedding channels zeroed (its LayerNorms over the
kept channels), stays timm's own class with consistent head attributes, trains, and survives a
save / load round trip through its factory record.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from secateur import build_model, load_model, save_model
from secateur.errors import ConfigError
from secateur.structured import Plan, analyse, apply_plan, prune_channels
from secateur.structured.attention import ATTENTION_LAYERS, layout_of
from structured_helpers import assert_equivalent, equivalence, train_step

timm = pytest.importorskip("timm")
Attention = timm.layers.Attention

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "num_heads": 4, "embed_dim": 32}


def _vit(arch: str = "vit_tiny_patch16_224", fused: bool = True, **options) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(f"timm:{arch}", input_shape=(3, 32, 32), num_classes=10, **{**TINY, **options}).eval()
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused  # scaled_dot_product_attention, or timm's own softmax(q k^T) v
    return model


def _images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _attentions(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def test_layout_is_registered_and_heads_are_groups_with_nothing_locked() -> None:
    assert "timm-vit" in ATTENTION_LAYERS.names()
    model = _vit()
    graph = analyse(model, _images()[:1])
    heads = [g for g in graph.groups if any(m.module == "blocks.0.attn" for m in g.members)]
    assert len(heads) == 1 and heads[0].size == 4
    assert {m.module for m in heads[0].members} == {"blocks.0.attn", "blocks.0.attn.qkv", "blocks.0.attn.proj"}
    assert graph.group("blocks.0.mlp.fc1").size == 128  # MLP hidden neurons
    assert graph.group("patch_embed.proj").size == 32  # the embedding (residual stream)
    assert not graph.unfollowed, graph.notes


ARCHS = [("vit_tiny_patch16_224", True), ("vit_tiny_patch16_224", False), ("deit_tiny_patch16_224", True),
         ("deit_tiny_distilled_patch16_224", False)]


@pytest.mark.parametrize(("arch", "fused"), ARCHS)
def test_heads_neurons_and_embedding_pruned_exactly(arch: str, fused: bool, tmp_path: Path) -> None:
    """Removed heads' q / k / v rows, MLP neurons and embedding channels zeroed: the same outputs."""
    model, x = _vit(arch, fused), _images()
    pruned, _plan, diff, scale = equivalence(copy.deepcopy(model), x, 0.5)
    assert scale > 1e-2  # a real comparison, not of zeros
    assert_equivalent(diff, scale)
    assert type(pruned) is type(model) and all(type(a) is Attention for a in _attentions(pruned))
    for attn in _attentions(pruned):
        assert attn.num_heads == 2 and attn.head_dim == 8  # whole heads go; head_dim stays
        assert attn.attn_dim == attn.num_heads * attn.head_dim == attn.qkv.out_features // 3 == attn.proj.in_features
        assert attn.qkv.in_features == attn.proj.out_features == pruned.patch_embed.proj.out_channels < 32
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m")  # rebuilt from the timm factory record and the plan
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), pruned(x))
    train_step(pruned, x)


def test_least_important_head_goes_first() -> None:
    model = _vit()
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.qkv.weight.view(3, 4, 8, 32)[:, 2] *= 1e-3
        attn.proj.weight[:, 16:24] *= 1e-3
    _, plan = prune_channels(model, _images()[:1], 0.25, ratios={"patch_embed.proj": 0.0})
    assert sorted({i // 8 for i in plan.keep_out["blocks.0.attn"]}) == [0, 1, 3]
    assert model.blocks[0].attn.num_heads == 3 and model.blocks[0].attn.qkv.out_features == 72


def test_pruning_twice_composes_and_loads(tmp_path: Path) -> None:
    model, x = _vit(), _images()
    prune_channels(model, x[:1], 0.5)
    prune_channels(model, x[:1], 0.5)
    assert [a.num_heads for a in _attentions(model)] == [1, 1]
    save_model(model, tmp_path / "m")
    again, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model(x))


def test_plan_cutting_a_head_apart_is_refused_and_model_unchanged() -> None:
    model, x = _vit(), _images()
    with torch.no_grad():
        before = model(x)
    with pytest.raises(ConfigError, match="whole heads"):
        apply_plan(model, Plan(keep_out={"blocks.0.attn": list(range(31)), "blocks.0.attn.qkv": list(range(93))},
                               keep_in={"blocks.0.attn.proj": list(range(31))}))
    assert model.blocks[0].attn.num_heads == 4 and model.blocks[0].attn.qkv.out_features == 96
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


def test_qk_norm_is_pruned_and_forms_it_cannot_keep_exact_are_left_to_the_trace() -> None:
    torch.manual_seed(0)
    assert layout_of(Attention(32, 4, qk_norm=True, norm_layer=nn.LayerNorm)) is not None  # norms over head_dim
    assert layout_of(Attention(32, 4, scale_norm=True, norm_layer=nn.LayerNorm)) is None  # LayerNorm over heads
    assert layout_of(Attention(32, 4, gated=True)) is None

    class Custom(Attention):  # a subclass may compute otherwise: not assumed to be timm's
        pass

    assert layout_of(Custom(32, 4)) is None
    model, x = _vit(qk_norm=True), _images()
    _pruned, _plan, diff, scale = equivalence(model, x, 0.5)
    assert_equivalent(diff, scale)


def test_the_layout_does_not_import_timm() -> None:
    """Analysing a model without timm layers never loads timm (an optional dependency)."""
    code = ("import sys, torch; from secateur.structured import analyse; "
            "analyse(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), "
            "torch.randn(1, 4)); assert 'timm' not in sys.modules, 'timm imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
