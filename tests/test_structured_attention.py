"""Structured pruning of attention heads and transformer MLP neurons (secateur.structured.attention).

Each model is tiny and built from a config (no downloads). For each: the pruned model equals the
original whose removed heads / neurons are zeroed in the output projections' columns, it
survives a save / load round trip, it is still its own class and runs (train mode, backward
included), and its head attributes match its new shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models.swin_transformer import SwinTransformer
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from secateur import load_model, save_model
from secateur.errors import ConfigError
from secateur.structured import Plan, analyse, apply_plan, prune_channels
from secateur.structured.attention import PrunedMultiheadAttention, PrunedShiftedWindowAttention
from structured_helpers import assert_equivalent, equivalence


def _vit() -> nn.Module:
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64)
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision starts it at zero: outputs would all be 0
    return vit


def _swin() -> nn.Module:
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                           num_classes=10)


def _bert() -> nn.Module:
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64))


def _bert_cls() -> nn.Module:
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64, num_labels=3))


def _gpt2() -> nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))


def _llama(kv_heads: int = 2) -> nn.Module:
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=kv_heads,
                                        max_position_embeddings=16, bos_token_id=0, eos_token_id=0,
                                        pad_token_id=0))


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _tokens() -> torch.Tensor:
    return torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _built(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return factory().eval()


def _zero_removed_inputs(model: nn.Module, plan: Plan) -> None:
    """Zero the input columns the plan removes (output projections and MLP down projections)."""
    with torch.no_grad():
        for path, keep in plan.keep_in.items():
            m = model.get_submodule(path)
            w = m.weight
            cols = w.shape[0] if type(m).__name__ == "Conv1D" else w.shape[1]
            gone = torch.tensor([i for i in range(cols) if i not in set(keep)], dtype=torch.long)
            if type(m).__name__ == "Conv1D":
                w[gone] = 0
            else:
                w[:, gone] = 0


# The residual streams (ViT's embedding, Swin's stages, the Hugging Face models' hidden size, a group
# named after the base model) keep their width where the analysis follows them through LayerNorm:
# these tests are about heads and MLP neurons, compared exactly (tests/test_structured_hf_hidden.py: the rest).
STREAMS_KEPT = {"conv_proj": 0.0, "features.0.0": 0.0, "features.*.reduction": 0.0, "": 0.0, "bert": 0.0,
                "transformer": 0.0, "model": 0.0}


def _prune(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[nn.Module, Plan]:
    return prune_channels(model, x, ratio, ratios=STREAMS_KEPT)


CASES = {
    "vit": (_vit, _images),
    "swin": (_swin, _images),
    "bert": (_bert, _tokens),
    "bert-cls": (_bert_cls, _tokens),
    "gpt2": (_gpt2, _tokens),
    "llama-gqa": (_llama, _tokens),
}


@pytest.mark.parametrize("name", list(CASES))
def test_heads_pruned_exactly_and_saved(name: str, tmp_path: Path) -> None:
    factory, inputs = CASES[name]
    x = inputs()
    original = _built(factory)
    graph = analyse(original, x[:1])
    head_groups = [g for g in graph.groups if g.size <= 4]
    assert head_groups, graph.notes
    pruned, plan = _prune(copy.deepcopy(original), x[:1], 0.5)
    assert type(pruned) is type(original)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in original.parameters())
    zeroed = copy.deepcopy(original)
    _zero_removed_inputs(zeroed, plan)
    reference = _output(zeroed, x)
    assert reference.abs().max() > 1e-2  # a real comparison, not of zeros
    torch.testing.assert_close(_output(pruned, x), reference, atol=1e-5, rtol=1e-4)
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _built(factory))
    torch.testing.assert_close(_output(again, x), _output(pruned, x))
    pruned.train()
    out = pruned(x)
    (out if isinstance(out, torch.Tensor) else out[0]).float().pow(2).mean().backward()


def test_vit_head_attributes_follow() -> None:
    model, _ = _prune(_built(_vit), _images()[:1], 0.5)
    for block in model.encoder.layers:
        attn = block.self_attention
        assert type(attn) is PrunedMultiheadAttention
        assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (2, 8, 32)
        assert attn.in_proj_weight.shape == (3 * 2 * 8, 32) and attn.out_proj.in_features == 16
        assert block.mlp[0].out_features == 32
        out, weights = attn(torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32), need_weights=True)
        assert out.shape == (2, 5, 32) and weights is not None and weights.shape == (2, 5, 5)


def test_swin_bias_table_keeps_the_kept_heads_columns() -> None:
    original = _built(_swin)
    with torch.no_grad():  # make head 0 of the first attention clearly the least important
        attn = original.features[1][0].attn
        attn.qkv.weight.view(3, 2, 8, 16)[:, 0] *= 1e-3
        attn.proj.weight[:, :8] *= 1e-3
    table = attn.relative_position_bias_table.detach().clone()
    pruned, _ = _prune(copy.deepcopy(original), _images()[:1], 0.5)
    new = pruned.features[1][0].attn
    assert type(new) is PrunedShiftedWindowAttention and new.num_heads == 1
    torch.testing.assert_close(new.relative_position_bias_table.detach(), table[:, 1:])
    assert [b.attn.num_heads for stage in (pruned.features[1], pruned.features[3]) for b in stage] == [1, 1, 2, 2]


def test_hf_head_attributes_follow() -> None:
    bert, _ = prune_channels(_built(_bert), _tokens()[:1], 0.5)
    sa = bert.encoder.layer[0].attention.self
    assert (sa.num_attention_heads, sa.all_head_size, sa.query.out_features) == (2, 16, 16)
    assert bert.encoder.layer[0].attention.output.dense.in_features == 16
    assert bert.encoder.layer[0].intermediate.dense.out_features == 32
    gpt2, _ = prune_channels(_built(_gpt2), _tokens()[:1], 0.5)
    attn = gpt2.transformer.h[0].attn
    assert (attn.num_heads, attn.split_size, attn.c_attn.nf, attn.c_proj.nx) == (2, 16, 48, 16)
    assert gpt2.transformer.h[0].mlp.c_fc.nf == 64


def test_grouped_query_attention_prunes_kv_groups_with_their_query_heads() -> None:
    model, _ = prune_channels(_built(_llama), _tokens()[:1], 0.5)
    attn = model.model.layers[0].self_attn
    assert (attn.num_heads, attn.num_key_value_heads, attn.num_key_value_groups) == (2, 1, 2)
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (16, 8, 8)
    assert attn.o_proj.in_features == 16 and model.model.layers[0].mlp.down_proj.in_features == 32


def test_multi_query_attention_prunes_query_heads_alone() -> None:
    original = _built(lambda: _llama(kv_heads=1))
    model, plan = _prune(copy.deepcopy(original), _tokens()[:1], 0.5)
    attn = model.model.layers[0].self_attn
    assert (attn.num_heads, attn.num_key_value_heads, attn.num_key_value_groups) == (2, 1, 2)
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (16, 8)
    zeroed = copy.deepcopy(original)
    _zero_removed_inputs(zeroed, plan)
    torch.testing.assert_close(_output(model, _tokens()), _output(zeroed, _tokens()), atol=1e-5, rtol=1e-4)


def test_least_important_head_goes_first() -> None:
    model = _built(_vit)
    attn = model.encoder.layers[0].self_attention
    with torch.no_grad():
        attn.in_proj_weight.view(3, 4, 8, 32)[:, 2] *= 1e-3
        attn.out_proj.weight[:, 16:24] *= 1e-3
    _, plan = _prune(model, _images()[:1], 0.25)
    kept_rows = plan.keep_out["encoder.layers.encoder_layer_0.self_attention"]
    assert sorted({i // 8 for i in kept_rows if i < 32}) == [0, 1, 3]


def test_pruning_twice_composes_one_plan(tmp_path: Path) -> None:
    model = _built(_vit)
    _prune(model, _images()[:1], 0.5)
    _prune(model, _images()[:1], 0.5)
    assert model.encoder.layers[0].self_attention.num_heads == 1
    save_model(model, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _built(_vit))
    torch.testing.assert_close(_output(again, _images()), _output(model, _images()))


def test_plan_cutting_a_head_apart_is_refused_and_model_unchanged() -> None:
    model = _built(_vit)
    path = "encoder.layers.encoder_layer_0.self_attention"
    before = _output(model, _images())
    with pytest.raises(ConfigError, match="whole heads"):
        apply_plan(model, Plan(keep_out={path: list(range(3 * 32 - 1))}))
    assert type(model.get_submodule(path)) is nn.MultiheadAttention
    torch.testing.assert_close(_output(model, _images()), before)


def test_vit_embedding_dimension_follows_through_layer_norms(tmp_path: Path) -> None:
    """The residual stream (conv_proj, class token, position embedding, LayerNorms, in_proj columns,
    out_proj and MLP rows, the head's columns) is one group; the pruned model equals the original
    with those channels zero and its LayerNorms over the kept channels."""
    vit, x = _built(_vit), _images()
    graph = analyse(vit, x[:1])
    assert graph.group("conv_proj").size == 32
    pruned, _plan, diff, scale = equivalence(copy.deepcopy(vit), x, 0.25)
    assert_equivalent(diff, scale)
    assert scale > 1e-2
    attn = pruned.encoder.layers[0].self_attention
    assert (pruned.hidden_dim, attn.embed_dim, attn.num_heads, attn.in_proj_weight.shape[1]) == (24, 24, 3, 24)
    assert pruned.class_token.shape[-1] == pruned.encoder.pos_embedding.shape[-1] == 24
    assert pruned.heads.head.in_features == 24 and pruned.encoder.ln.normalized_shape == (24,)
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _built(_vit))
    torch.testing.assert_close(_output(again, x), _output(pruned, x))


@pytest.mark.parametrize("batch_first", [False, True])
def test_pruned_multihead_attention_matches_torch_with_masks(batch_first: bool) -> None:
    """PrunedMultiheadAttention's own forward equals torch's on the zeroed heads, masks included."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    rows = [s * 16 + h * 4 + j for s in range(3) for h in (0, 2) for j in range(4)]
    plan = Plan(keep_out={"": rows}, keep_in={"out_proj": [h * 4 + j for h in (0, 2) for j in range(4)]})
    zeroed = copy.deepcopy(mha)
    _zero_removed_inputs(zeroed, plan)
    pruned = apply_plan(copy.deepcopy(mha), plan)
    assert type(pruned) is PrunedMultiheadAttention and pruned.num_heads == 2
    q, kv = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    pad = torch.zeros(3, 7)
    pad[0, -2:] = float("-inf")  # float masks both (torch warns when the two types differ)
    mask = torch.randn(5, 7)
    with torch.no_grad():
        want, _ = zeroed(q, kv, kv, key_padding_mask=pad, attn_mask=mask, need_weights=False)
        got, weights = pruned(q, kv, kv, key_padding_mask=pad, attn_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert weights is not None and weights.shape == (3, 5, 7)
    assert torch.all(weights[0, :, -2:] == 0)
