"""timm's ViT attention heads pruned with the MLP neurons and the embedding (secateur.structured.attention_timm).

Each model is a tiny timm ViT / DeiT built from its config (no weights). The pruned model equals the
original with the removed heads, neurons and embedding channels zeroed (its LayerNorms over the
kept channels), stays timm's own class with consistent head attributes, trains, and survives a
save / load round trip through its factory record.
"""

from __future__ import annotations

import ast
import copy
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
    return _random_biases(model)


def _random_biases(model: nn.Module) -> nn.Module:
    """timm starts biases at zero: random ones make the removed rows' biases count in the comparisons."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):  # Linear / LayerNorm biases, EVA's q_bias / v_bias
                p.normal_(0.0, 0.5)
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


def test_the_layouts_module_does_not_import_timm() -> None:
    """timm is optional: the layouts recognise its classes by name, so loading them never imports it."""
    import secateur.structured.attention_timm as layouts

    tree = ast.parse(Path(layouts.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.split(".")[0] == "timm"]


# --------------------------------------------------------------------------- MaxViT / CoAtNet, ConViT


def _maxxvit(blocks: tuple[str, ...]) -> nn.Module:
    """A tiny MaxViT ('M' blocks: AttentionCl, channels last) or CoAtNet ('T': Attention2d, NCHW 1x1 convs)."""
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, _rw_max_cfg

    cfg = MaxxVitCfg(embed_dim=(16, 32, 32), depths=(1, 1, 1), block_type=blocks, stem_width=(8, 16),
                     **_rw_max_cfg(dim_head=8))  # 2, 4 and 4 heads, relative position biases
    return MaxxVit(cfg, img_size=64, num_classes=10)


OTHERS = {
    "maxvit": (lambda: _maxxvit(("M", "M", "M")), 64),
    "coatnet": (lambda: _maxxvit(("C", "T", "T")), 64),
    "convit": (lambda: build_model("timm:convit_tiny", input_shape=(3, 32, 32), num_classes=10, img_size=32,
                                   patch_size=8, depth=4, local_up_to_layer=2), 32),  # GPSA, then MHSA blocks
}


def _other(name: str, fused: bool = True) -> tuple[nn.Module, torch.Tensor]:
    factory, size = OTHERS[name]
    torch.manual_seed(0)
    model = _random_biases(factory().eval())
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _heads(model: nn.Module) -> dict[str, int]:
    return {path: int(m.num_heads) for path, m in model.named_modules() if layout_of(m) is not None}


@pytest.mark.parametrize(("name", "fused"), [("maxvit", True), ("maxvit", False), ("coatnet", True),
                                             ("coatnet", False), ("convit", True)])
def test_other_timm_attention_pruned_exactly_and_saved(name: str, fused: bool, tmp_path: Path) -> None:
    model, x = _other(name, fused)
    before = _heads(model)
    assert before and not analyse(model, x[:1]).unfollowed
    pruned, _plan, diff, scale = equivalence(copy.deepcopy(model), x, 0.5)
    assert scale > 1e-2
    assert_equivalent(diff, scale)
    after = _heads(pruned)
    assert after.keys() == before.keys() and all(after[p] == max(1, before[p] // 2) for p in before)
    for path, m in pruned.named_modules():
        rel = getattr(m, "rel_pos", None)
        if path in after and rel is not None:  # a relative position bias table keeps one column per kept head
            assert rel.relative_position_bias_table.shape[1] == rel.bias_shape[2] == m.num_heads
        if path in after and hasattr(m, "pos_proj"):  # ConViT's positional rows and gates, one per kept head
            assert m.pos_proj.out_features == m.gating_param.numel() == m.num_heads
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _other(name, fused)[0])
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), pruned(x))
    train_step(pruned, x)


@pytest.mark.parametrize("head_first", [True, False])
def test_maxxvit_packing_keeps_the_important_heads(head_first: bool) -> None:
    """Head-first packing ([q_h, k_h, v_h] per head) and block packing (all q, then k, then v) alike."""
    from timm.models.maxxvit import AttentionCl

    torch.manual_seed(0)
    model = nn.Sequential(AttentionCl(32, dim_head=8, head_first=head_first), nn.Linear(32, 10)).eval()
    attn = model[0]
    with torch.no_grad():  # head 2 clearly the least important
        rows = attn.qkv.weight.view(4, 3, 8, 32)[2] if head_first else attn.qkv.weight.view(3, 4, 8, 32)[:, 2]
        rows *= 1e-3
        attn.proj.weight[:, 16:24] *= 1e-3
    x = torch.randn(2, 16, 32)
    zeroed = copy.deepcopy(model)
    pruned, plan = prune_channels(model, x[:1], 0.25, ratios={"0.proj": 0.0})
    assert sorted({i // 8 for i in plan.keep_out["0"]}) == [0, 1, 3] and attn.num_heads == 3
    with torch.no_grad():
        zeroed[0].proj.weight[:, 16:24] = 0
        torch.testing.assert_close(pruned(x), zeroed(x), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- EVA (EvaAttention, AttentionRope)

EVA = {
    "eva": {},  # EvaAttention: packed qkv, its q / k / v biases apart; rotary embeddings
    "eva-separate": {"qkv_fused": False},
    "rope": {"attn_type": "rope"},  # AttentionRope
    "rope-gqa": {"attn_type": "rope", "qkv_fused": False, "num_kv_heads": 2},  # grouped-query
}


def _eva(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("timm:eva02_tiny_patch14_224", input_shape=(3, 28, 28), num_classes=10, img_size=28,
                        depth=2, num_heads=4, embed_dim=32, **EVA[name]).eval()
    nn.init.normal_(model.head.weight, std=0.5)  # EVA starts its head near zero: outputs would be tiny
    return _random_biases(model)


@pytest.mark.parametrize("name", list(EVA))
def test_eva_heads_pruned_exactly_and_saved(name: str, tmp_path: Path) -> None:
    model, x = _eva(name), torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    kind = type(model.blocks[0].attn)
    assert kind.__name__ == ("AttentionRope" if "rope" in name else "EvaAttention")
    pruned, _plan, diff, scale = equivalence(copy.deepcopy(model), x, 0.5)
    assert scale > 1e-2
    assert_equivalent(diff, scale)
    attn = pruned.blocks[0].attn
    assert attn.num_heads == 2 and isinstance(attn, kind) and attn.proj.in_features == 2 * attn.head_dim
    if name == "eva":
        assert type(attn).__name__ == "PrunedEvaAttention" and attn.q_bias.shape == attn.k_bias.shape == (16,)
    if name == "rope-gqa":
        assert (attn.num_kv_heads, attn.num_kv_groups, attn.k_proj.out_features) == (1, 2, attn.head_dim)
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), pruned(x))
    train_step(pruned, x)
