"""The per-head dimension (``attention="head-dims"``): dimension j of every head's query, key and
value is one channel, so every head keeps the same dimensions and the layer's one ``head_dim``
attribute follows; the heads stay. The softmax scale stays the original's (held by the layer, set
on secateur's pruned classes, or folded into the query rows), so the pruned model equals the
original whose removed dimensions are zero. A layout that cannot shrink it (rotary embeddings)
keeps its attention whole and says so per op.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

from secateur import load_model, save_model
from secateur.app.cli import main
from secateur.app.recipe import read_recipe
from secateur.errors import ConfigError
from secateur.search.config import PruneConfig
from secateur.structured import Plan, analyse, apply_plan, prune_channels
from secateur.zoo.models import build_model
from structured_helpers import kept_layer_norms, zero_pruned
from test_structured_attention import (
    STREAMS_KEPT,
    _bert,
    _bert_cls,
    _built,
    _gpt2,
    _images,
    _llama,
    _output,
    _swin,
    _tokens,
    _vit,
    _zero_removed_inputs,
)


def _swin_v2() -> nn.Module:
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                           num_classes=10, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)


def _vit_mnist() -> nn.Module:
    return build_model("vit-mnist", dim=32, heads=4, depth=2)


def _digits() -> torch.Tensor:
    return torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "torchvision-vit": (_vit, _images),
    "torchvision-swin": (_swin, _images),
    "torchvision-swin-v2": (_swin_v2, _images),
    "hf-bert": (_bert, _tokens),
    "hf-bert-cls": (_bert_cls, _tokens),
    "hf-gpt2": (_gpt2, _tokens),
    "vit-mnist": (_vit_mnist, _digits),
}


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if any(hasattr(m, a) for a in ("in_proj_weight", "qkv", "c_attn", "query"))
            and any(hasattr(m, a) for a in ("num_heads", "num_attention_heads"))]


def _shape(m: nn.Module) -> tuple[int, int]:
    """(heads, head width) as the layer's forward reads them."""
    if hasattr(m, "num_attention_heads"):
        return int(m.num_attention_heads), int(m.attention_head_size)
    if hasattr(m, "qkv"):
        return int(m.num_heads), m.qkv.out_features // (3 * int(m.num_heads))
    return int(m.num_heads), int(m.head_dim)


def _reference(original: nn.Module, plan: Plan, x: torch.Tensor) -> torch.Tensor:
    """The original with the removed dimensions' q / k / v rows and output columns zero."""
    zeroed = copy.deepcopy(original)
    zero_pruned(zeroed, plan)
    _zero_removed_inputs(zeroed, plan)
    with kept_layer_norms(zeroed, plan):
        return _output(zeroed, x)


def _sharpened(model: nn.Module) -> nn.Module:
    """Query / key weights scaled up, so attention is far from uniform and a wrong softmax scale shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in ("in_proj_weight", "qkv.weight", "query.weight", "key.weight",
                                             "c_attn.weight", "attn.q.weight", "attn.k.weight")):
                p.mul_(4.0)
    return model


@pytest.mark.parametrize("name", list(CASES))
def test_head_dims_pruned_exactly_heads_kept_and_saved(name: str, tmp_path: Path) -> None:
    factory, inputs = CASES[name]
    x = inputs()
    original = _sharpened(_built(factory))
    before = [_shape(m) for m in _attention_layers(original)]
    pruned, plan = prune_channels(copy.deepcopy(original), x[:1], 0.5, ratios=STREAMS_KEPT, attention="head-dims")
    assert type(pruned) is type(original)
    after = [_shape(m) for m in _attention_layers(pruned)]
    assert after == [(h, d // 2) for h, d in before], (before, after)
    reference = _reference(original, plan, x)
    assert reference.abs().max() > 1e-2  # a real comparison, not of zeros
    torch.testing.assert_close(_output(pruned, x), reference, atol=1e-5, rtol=1e-4)
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _sharpened(_built(factory)))
    torch.testing.assert_close(_output(again, x), _output(pruned, x))
    pruned.train()
    out = pruned(x)
    (out if isinstance(out, torch.Tensor) else out[0]).float().pow(2).mean().backward()


def test_weakest_dimension_goes_first_in_every_head() -> None:
    model = _built(_vit)
    attn = model.encoder.layers[0].self_attention
    with torch.no_grad():  # dimension 5 of every head's q, k and v, and its output columns, nearly zero
        attn.in_proj_weight.view(3, 4, 8, 32)[:, :, 5] *= 1e-3
        attn.out_proj.weight.view(32, 4, 8)[:, :, 5] *= 1e-3
    _, plan = prune_channels(model, _images()[:1], 1 / 8, ratios=STREAMS_KEPT, attention="head-dims")
    rows = plan.keep_out["encoder.layers.encoder_layer_0.self_attention"]
    assert sorted(rows) == [s * 32 + h * 8 + j for s in range(3) for h in range(4) for j in range(8) if j != 5]
    assert model.encoder.layers[0].self_attention.head_dim == 7


class _HeldScale(nn.Module):
    """Your own attention in the ``qkv-proj`` pattern whose forward reads a ``scale`` it holds."""

    def __init__(self, dim: int = 16, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        q, k, v = (f(x).reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        out = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(4, 16), _HeldScale(), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(x)).mean(1))


@pytest.mark.parametrize("held", [False, True])
def test_the_softmax_scale_is_folded_into_the_queries_only_where_the_forward_derives_it(held: bool) -> None:
    """vit-mnist divides by sqrt(head_dim): its kept query rows take over the old scale; a layer
    holding its ``scale`` keeps its query rows as they were (the pruned models are exact, above)."""
    original = _built(_Tokens) if held else _built(_vit_mnist)
    x = torch.randn(2, 5, 4) if held else _digits()
    pruned, plan = prune_channels(copy.deepcopy(original), x[:1], 0.5, ratios={"embed": 0.0, "patch_embed": 0.0},
                                  attention="head-dims")
    path = "attn.q" if held else "blocks.0.attn.q"
    q0, q1 = original.get_submodule(path), pruned.get_submodule(path)
    rows = torch.tensor(plan.keep_out[path])
    factor = 1.0 if held else 0.5 ** 0.5
    torch.testing.assert_close(q1.weight, q0.weight[rows] * factor)
    torch.testing.assert_close(q1.bias, q0.bias[rows] * factor)
    reference = _reference(original, plan, x)
    torch.testing.assert_close(_output(pruned, x), reference, atol=1e-5, rtol=1e-4)


def test_heads_and_dims_compose_and_reload(tmp_path: Path) -> None:
    """Heads first, then dimensions: one plan over the original, rebuilt by load_model."""
    model, x = _built(_vit), _images()
    prune_channels(model, x[:1], 0.5, ratios=STREAMS_KEPT)
    prune_channels(model, x[:1], 0.5, ratios=STREAMS_KEPT, attention="head-dims")
    attn = model.encoder.layers[0].self_attention
    assert (attn.num_heads, attn.head_dim, attn.in_proj_weight.shape[0]) == (2, 4, 24)
    save_model(model, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _built(_vit))
    torch.testing.assert_close(_output(again, x), _output(model, x))


def test_rotary_attention_is_kept_whole_and_reported() -> None:
    x = _tokens()
    graph = analyse(_built(_llama), x[:1], attention="head-dims")
    kept = {u.path: u for u in graph.unfollowed if u.op == "head-dims"}
    assert set(kept) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    assert all(u.channels > 0 for u in kept.values())
    pruned, _ = prune_channels(_built(_llama), x[:1], 0.5, attention="head-dims")
    attn = pruned.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (32, 16)  # heads and dims kept
    assert pruned.model.layers[0].mlp.down_proj.in_features == 32  # the MLP still pruned


def test_plan_with_different_dims_per_head_is_refused_and_model_unchanged() -> None:
    model = _built(_vit)
    path = "encoder.layers.encoder_layer_0.self_attention"
    before = _output(model, _images())
    rows = [s * 32 + h * 8 + j for s in range(3) for h in range(4) for j in range(8) if j != h]  # head h loses dim h
    with pytest.raises(ConfigError, match="same dimensions in every kept head"):
        apply_plan(model, Plan(keep_out={path: rows}))
    assert type(model.get_submodule(path)) is nn.MultiheadAttention
    torch.testing.assert_close(_output(model, _images()), before)


def test_attention_option_is_validated_and_reaches_the_cli_and_recipe(capsys, tmp_path: Path) -> None:
    assert PruneConfig(granularity="channel", attention="head-dims").validate().attention == "head-dims"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("granularity: neuron\nattention: head-dims\n")
    assert PruneConfig.from_dict(read_recipe(recipe).prune).validate().attention == "head-dims"
    with pytest.raises(ConfigError, match="unknown attention unit 'dims'"):
        PruneConfig(granularity="channel", attention="dims").validate()
    with pytest.raises(ConfigError):  # an option of the physical granularities only
        PruneConfig(granularity="weight", attention="head-dims").validate()
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    assert "--attention" in capsys.readouterr().out


def test_info_counts_head_dims_and_refuses_an_unknown_unit(capsys) -> None:
    assert main(["info", "vit-mnist", "--attention", "head-dims"]) == 0
    heads_dims = capsys.readouterr().out
    assert main(["info", "vit-mnist"]) == 0
    heads = capsys.readouterr().out
    channels = [int(text.split("groups, ")[1].split(" channels")[0].replace(",", ""))
                for text in (heads_dims, heads)]
    assert channels[0] - channels[1] == 4 * (16 - 4)  # 4 layers: 16 dimensions instead of 4 heads each
    assert main(["info", "vit-mnist", "--attention", "dims"]) == 2
    assert "unknown attention unit 'dims'" in capsys.readouterr().err
