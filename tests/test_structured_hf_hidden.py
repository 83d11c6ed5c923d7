"""The hidden size (residual stream) of Hugging Face BERT, GPT-2 and LLaMA (secateur.structured.hf_hidden).

Tiny models from configs (no downloads). At 50% of heads and MLP neurons and 25% of the hidden
size, each pruned model is its own class, equals the original whose removed structures are zeroed
and whose LayerNorms / RMSNorms are taken over the kept channels only, trains (backward), survives
a save / load round trip (the plan replays on a fresh model), and needs at least 2.5x fewer MACs
(the sequence-classification heads; a vocabulary head is never pruned).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from secateur import PruningSession, load_model, save_model
from secateur.analysis.metrics import count_macs, zero_input
from secateur.errors import ConfigError
from secateur.structured import Plan, analyse, apply_plan, prune_channels
from secateur.structured.hf_hidden import RESIDUAL_STREAMS
from secateur.structured.tracker import split_param_key

V, L = 100, 8  # vocabulary, tokens


def _bert(cls: type = BertForSequenceClassification) -> nn.Module:
    return cls(BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, num_labels=3))


def _gpt2(cls: type = GPT2LMHeadModel) -> nn.Module:
    return cls(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0,
                          eos_token_id=0, pad_token_id=0, num_labels=3))


def _llama(cls: type = LlamaForCausalLM, tied: bool = False) -> nn.Module:
    return cls(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                           bos_token_id=0, eos_token_id=0, pad_token_id=0, num_labels=3,
                           tie_word_embeddings=tied))


CASES: dict[str, tuple[Callable[[], nn.Module], str]] = {  # factory, base model path (the stream group)
    "bert-cls": (_bert, "bert"),
    "gpt2-lm": (_gpt2, "transformer"),
    "gpt2-cls": (lambda: _gpt2(GPT2ForSequenceClassification), "transformer"),
    "llama-lm": (_llama, "model"),
    "llama-tied": (lambda: _llama(tied=True), "model"),
    "llama-cls": (lambda: _llama(LlamaForSequenceClassification), "model"),
}


def _built(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():  # non-trivial norms, so that a wrong channel cannot hide
        for m in model.modules():
            for name in ("weight", "bias"):
                t = getattr(m, name, None)
                if type(m).__name__.endswith(("LayerNorm", "RMSNorm")) and isinstance(t, torch.Tensor):
                    t.add_(torch.randn_like(t) * 0.2)
    return model


def _tokens() -> torch.Tensor:
    return torch.randint(1, V, (2, L), generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def _zero_removed(model: nn.Module, plan: Plan) -> None:
    """Zero every removed row / column / slice the plan names (Linear, Conv1D, parameter dims)."""
    with torch.no_grad():
        for role, table in (("out", plan.keep_out), ("in", plan.keep_in)):
            for key, keep in table.items():
                param = split_param_key(key)
                if param is not None:
                    owner, _, name = param[0].rpartition(".")
                    _zero(getattr(model.get_submodule(owner), name), param[1], keep)
                    continue
                m = model.get_submodule(key)
                if not isinstance(getattr(m, "weight", None), torch.Tensor):
                    continue  # a base model / attention owner: no tensor of its own
                conv1d = type(m).__name__ == "Conv1D"  # weight stored (in, out)
                _zero(m.weight, (1 if role == "out" else 0) if conv1d else (0 if role == "out" else 1), keep)
                if role == "out" and getattr(m, "bias", None) is not None:
                    _zero(m.bias, 0, keep)


def _zero(t: torch.Tensor, dim: int, keep: list[int]) -> None:
    gone = torch.ones(t.shape[dim], dtype=torch.bool)
    gone[keep] = False
    t.index_fill_(dim, gone.nonzero().reshape(-1), 0)


@contextmanager
def _kept_norms(model: nn.Module, plan: Plan) -> Iterator[None]:
    """While active, each norm whose weight the plan slices normalises over its kept channels only
    (a pruned copy of itself) and outputs 0 at the removed ones: what the pruned model equals."""
    patched = []
    for key, keep in plan.keep_out.items():
        param = split_param_key(key)
        if param is None or not param[0].endswith(".weight"):
            continue
        norm = model.get_submodule(param[0].rpartition(".")[0])
        if not type(norm).__name__.endswith(("LayerNorm", "RMSNorm")):
            continue
        small = copy.deepcopy(norm)
        idx = torch.tensor(keep)
        small.weight = nn.Parameter(norm.weight.detach()[idx])
        if getattr(norm, "bias", None) is not None:
            small.bias = nn.Parameter(norm.bias.detach()[idx])
        if isinstance(small, nn.LayerNorm):
            small.normalized_shape = (len(keep),)

        def forward(x: torch.Tensor, small: nn.Module = small, idx: torch.Tensor = idx) -> torch.Tensor:
            y = torch.zeros_like(x)
            y[..., idx] = small(x[..., idx])
            return y

        norm.forward = forward
        patched.append(norm)
    try:
        yield
    finally:
        for norm in patched:
            del norm.forward


def _prune(model: nn.Module, base: str, hidden: float = 0.25) -> tuple[nn.Module, Plan]:
    return prune_channels(model, _tokens()[:1], 0.5, ratios={base: hidden})


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def _tied(model: nn.Module) -> bool:
    head = getattr(model, "lm_head", None)
    return head is not None and head.weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("name", list(CASES))
def test_hidden_size_pruned_exactly_and_saved(name: str, tmp_path: Path) -> None:
    factory, base = CASES[name]
    original, x = _built(factory), _tokens()
    graph = analyse(original, x[:1])
    assert graph.group(base).size == 32, graph.notes
    pruned, plan = _prune(copy.deepcopy(original), base)
    assert type(pruned) is type(original)
    assert pruned.config.hidden_size == 24 and pruned.get_submodule(base).config is pruned.config
    reference = copy.deepcopy(original)
    _zero_removed(reference, plan)
    with _kept_norms(reference, plan):
        want = _logits(reference, x)
    assert want.abs().max() > 1e-2  # a real comparison, not of zeros
    torch.testing.assert_close(_logits(pruned, x), want, atol=1e-5, rtol=1e-4)
    assert _logits(pruned, x).shape == _logits(original, x).shape  # labels / vocabulary never pruned
    save_model(pruned, tmp_path / "m")
    again, _ = load_model(tmp_path / "m", _built(factory))
    torch.testing.assert_close(_logits(again, x), _logits(pruned, x))
    assert again.config.hidden_size == 24
    assert _tied(pruned) == _tied(again) == _tied(original)  # a tied head stays tied, through the round trip
    pruned.train()
    pruned(x).logits.float().pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pruned.parameters())


def test_layers_and_attributes_follow_the_kept_width() -> None:
    bert, _ = _prune(_built(_bert), "bert")
    layer = bert.bert.encoder.layer[0]
    assert bert.bert.embeddings.word_embeddings.weight.shape == (V, 24)
    assert layer.attention.self.query.in_features == 24 and layer.attention.output.dense.out_features == 24
    assert layer.output.LayerNorm.normalized_shape == (24,) and bert.bert.pooler.dense.in_features == 24
    assert bert.bert.pooler.dense.out_features == 32 and bert.classifier.in_features == 32  # off the stream
    gpt2, _ = _prune(_built(_gpt2), "transformer")
    block = gpt2.transformer.h[0]
    assert (block.attn.c_attn.nx, block.attn.c_proj.nf, block.mlp.c_fc.nx, block.mlp.c_proj.nf) == (24, 24, 24, 24)
    assert (gpt2.transformer.embed_dim, block.attn.embed_dim, gpt2.config.n_embd) == (24, 24, 24)
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight and gpt2.lm_head.weight.shape == (V, 24)
    llama, _ = _prune(_built(_llama), "model")
    attn = llama.model.layers[0].self_attn
    assert (attn.q_proj.in_features, attn.o_proj.out_features, attn.num_key_value_heads) == (24, 24, 1)
    assert llama.model.layers[0].input_layernorm.weight.shape == (24,) and llama.model.norm.weight.shape == (24,)
    assert llama.lm_head.in_features == 24 and llama.lm_head.out_features == V


@pytest.mark.parametrize("name", ["bert-cls", "gpt2-cls", "llama-cls"])
def test_half_the_heads_and_neurons_and_a_quarter_of_the_hidden_size_cut_macs_2_5x(name: str) -> None:
    factory, base = CASES[name]
    original, x = _built(factory), _tokens()
    pruned, _ = _prune(copy.deepcopy(original), base)
    assert _macs(original, x) / _macs(pruned, x) >= 2.5


def test_tied_parameters_cut_differently_are_refused_and_model_unchanged() -> None:
    model = _built(_gpt2)
    before = _logits(model, _tokens())
    with pytest.raises(ConfigError, match="tied parameters"):
        apply_plan(model, Plan(keep_in={"lm_head": list(range(16))}))
    assert model.lm_head.weight is model.transformer.wte.weight and model.lm_head.in_features == 32
    torch.testing.assert_close(_logits(model, _tokens()), before)


def _cross_attention_gpt2() -> nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                      add_cross_attention=True, bos_token_id=0, eos_token_id=0))


@pytest.mark.parametrize("factory,base,why", [
    (lambda: _bert(BertForMaskedLM), "bert", "the hidden size is kept"),  # its head is not declared
    (_cross_attention_gpt2, "transformer", "is not on its declared residual stream"),  # an unknown layer
])
def test_an_undeclared_head_or_layer_keeps_the_hidden_size(factory: Callable[[], nn.Module], base: str,
                                                           why: str) -> None:
    """BertForMaskedLM's prediction head (a transform tied to the word embeddings) and GPT-2's
    cross-attention are not on a declared stream: heads and MLP neurons are pruned, the hidden size kept."""
    model = _built(factory)
    graph = analyse(model, _tokens()[:1])
    assert base not in [g.name for g in graph.groups]
    assert any(why in note for note in graph.notes), graph.notes
    pruned, _ = prune_channels(model, _tokens()[:1], 0.5)
    assert pruned.config.hidden_size == 32 and _logits(pruned, _tokens()).shape[-1] == V


def test_stream_layouts_are_registered() -> None:
    assert {"hf-bert", "hf-gpt2", "hf-llama"} <= set(RESIDUAL_STREAMS)


def test_token_models_get_token_ids_as_example_inputs() -> None:
    """Tracing, surgery checks and MAC counts feed a text model zero token ids (long), others floats."""
    assert zero_input(_built(_bert), (L,)).dtype == torch.long
    assert zero_input(nn.Sequential(nn.Linear(4, 2)), (4,)).dtype == torch.float32
    assert count_macs(_built(_bert), (L,)) > 0


def test_a_pruning_session_drives_a_hugging_face_model() -> None:
    """The search's own loop (rounds, judging, roll-back) on token ids: input_shape is the sequence length."""
    model = _built(_bert)
    session = PruningSession(model, lambda m: 1.0, granularity="channel", input_shape=(L,), max_drop=0.01,
                             rounds=2)
    for candidate in session:
        assert type(candidate) is type(model)
    result = session.result
    assert result is not None and result.model.config.hidden_size < 32
    assert _logits(result.model, _tokens()).shape == (2, 3)
