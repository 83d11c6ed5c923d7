"""The hidden size (residual stream) of Hugging Face transformers, declared per architecture.

fx cannot trace a Hugging Face model's own forward (keyword-only inputs, cache and mask
builders, output dataclasses), so the analysis cannot follow its residual stream op by op.
Each supported architecture instead declares it: a function registered in
:data:`RESIDUAL_STREAMS` returns the model's :class:`StreamLayout` (None if the model is not
one), naming every tensor that reads or writes the stream beyond the registered attention /
MLP layers (:mod:`secateur.structured.attention`), whose input columns and output rows join
the stream as well:

- ``hf-bert``: BERT (word / position / token-type embeddings, every LayerNorm, the pooler's columns);
- ``hf-gpt2``: GPT-2 (``wte`` / ``wpe``, ``ln_1`` / ``ln_2`` / ``ln_f``, packed ``Conv1D`` layers);
- ``hf-llama``: LLaMA (``embed_tokens``, every RMSNorm, grouped-query attention).

A task head reading the stream (``lm_head``, ``score``, a token classifier) loses input columns;
its outputs (vocabulary, labels) are never pruned. Heads are declared per model class: a class
whose heads are not declared, or a model with a parameter the layout does not account for
(cross-attention, a masked-LM head), keeps its hidden size (heads and MLP neurons are still
pruned, by :func:`~secateur.structured.attention.record_blocks`). Tied weights (GPT-2's
``lm_head`` and ``wte``) stay tied (:mod:`secateur.structured.surgery`).

The stream is one group named after the base model's path (``bert``, ``transformer``, ``model``;
``""`` for a bare base model), so ``ratios={"transformer": 0.25}`` sets its share. Surgery sets
``config.hidden_size`` and the modules' own ``embed_dim`` / ``hidden_size`` to the kept count.
Pruned LayerNorms / RMSNorms normalise over fewer channels: the pruned model equals the original
with the removed channels zeroed and its norms taken over the kept channels only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from secateur.registry import Registry
from secateur.structured.attention import HeadLayout, MlpLayout, blocks, label_layer, record_blocks
from secateur.structured.tracker import Tracker, param_key, split_param_key

Edit = tuple[Any, str, Any]  # (module or config, attribute / parameter name, new value)
SIZE_ATTRIBUTES = ("embed_dim", "hidden_size")  # module attributes the forward or a user may read


@dataclass(frozen=True)
class StreamLayout:
    """One model's residual stream: its width, the base model owning ``config``, and the tensors
    on it beyond the registered attention / MLP layers (full paths from the model's root)."""

    width: int
    base: str  # the base model (its config's hidden size follows); the stream group's name
    embeddings: tuple[str, ...]  # nn.Embedding layers whose columns are stream channels
    norms: tuple[str, ...]  # LayerNorm / RMSNorm layers on the stream (weight, and bias if any)
    readers: tuple[str, ...]  # Linear layers outside the blocks reading the stream (their columns)
    outside: tuple[str, ...] = field(default=())  # layers off the stream (a classifier on the pooler)


StreamFn = Callable[[nn.Module], StreamLayout | None]

RESIDUAL_STREAMS: Registry[StreamFn] = Registry("residual stream layout")


def residual_stream(name: str) -> Callable[[StreamFn], StreamFn]:
    """Decorator: register a function returning a model's :class:`StreamLayout` (None if not its kind)."""

    def decorate(fn: StreamFn) -> StreamFn:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        RESIDUAL_STREAMS.add(name, fn, doc)
        return fn

    return decorate


def stream_of(model: nn.Module) -> StreamLayout | None:
    """The layout of ``model``'s residual stream from the first layout that recognises it."""
    for name in RESIDUAL_STREAMS:
        found = RESIDUAL_STREAMS.get(name)(model)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- layouts


def _base(model: nn.Module, suffix: str, prefix: str) -> str | None:
    """Path of the base model: the root if it is the ``suffix`` class, else its ``prefix`` child."""
    if type(model).__name__.endswith(suffix):
        return ""
    child = getattr(model, prefix, None)
    return prefix if child is not None and type(child).__name__.endswith(suffix) else None


def _p(*parts: str) -> str:
    return ".".join(p for p in parts if p)


Heads = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # model class -> (readers, outside)


def _heads(model: nn.Module, known: Heads) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(readers, outside) declared for ``model``'s class (None: its heads are not declared)."""
    return known.get(type(model).__name__)


_BERT_HEADS: Heads = {"BertModel": ((), ()), "BertForSequenceClassification": ((), ("classifier",)),
               "BertForMultipleChoice": ((), ("classifier",)), "BertForTokenClassification": (("classifier",), ()),
               "BertForQuestionAnswering": (("qa_outputs",), ())}


@residual_stream("hf-bert")
def _bert(model: nn.Module) -> StreamLayout | None:
    """Hugging Face BERT: embeddings, every LayerNorm, the attention / MLP layers and the pooler."""
    base, heads = _base(model, "BertModel", "bert"), _heads(model, _BERT_HEADS)
    if base is None or heads is None:
        return None
    b: Any = model.get_submodule(base)
    emb = [_p(base, "embeddings", n) for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    norms = [_p(base, "embeddings.LayerNorm")]
    for i, _ in enumerate(b.encoder.layer):
        layer = _p(base, f"encoder.layer.{i}")
        norms += [_p(layer, "attention.output.LayerNorm"), _p(layer, "output.LayerNorm")]
    readers = [_p(base, "pooler.dense")] if getattr(b, "pooler", None) is not None else []
    return StreamLayout(int(b.config.hidden_size), base, tuple(emb), tuple(norms), (*readers, *heads[0]), heads[1])


_GPT2_HEADS: Heads = {"GPT2Model": ((), ()), "GPT2LMHeadModel": (("lm_head",), ()),
               "GPT2ForSequenceClassification": (("score",), ()), "GPT2ForTokenClassification": (("classifier",), ()),
               "GPT2ForQuestionAnswering": (("qa_outputs",), ())}


@residual_stream("hf-gpt2")
def _gpt2(model: nn.Module) -> StreamLayout | None:
    """Hugging Face GPT-2: wte / wpe, ln_1 / ln_2 / ln_f, the Conv1D attention / MLP layers, the head."""
    base, heads = _base(model, "GPT2Model", "transformer"), _heads(model, _GPT2_HEADS)
    if base is None or heads is None:
        return None
    b: Any = model.get_submodule(base)
    norms = [_p(base, f"h.{i}.{n}") for i, _ in enumerate(b.h) for n in ("ln_1", "ln_2")]
    return StreamLayout(int(b.embed_dim), base, (_p(base, "wte"), _p(base, "wpe")), (*norms, _p(base, "ln_f")),
                        heads[0], heads[1])


_LLAMA_HEADS: Heads = {"LlamaModel": ((), ()), "LlamaForCausalLM": (("lm_head",), ()),
                "LlamaForSequenceClassification": (("score",), ()), "LlamaForTokenClassification": (("score",), ()),
                "LlamaForQuestionAnswering": (("qa_outputs",), ())}


@residual_stream("hf-llama")
def _llama(model: nn.Module) -> StreamLayout | None:
    """Hugging Face LLaMA: embed_tokens, every RMSNorm, the attention (GQA) / gated MLP layers, the head."""
    base, heads = _base(model, "LlamaModel", "model"), _heads(model, _LLAMA_HEADS)
    if base is None or heads is None:
        return None
    b: Any = model.get_submodule(base)
    norms = [_p(base, f"layers.{i}.{n}") for i, _ in enumerate(b.layers)
             for n in ("input_layernorm", "post_attention_layernorm")]
    return StreamLayout(int(b.config.hidden_size), base, (_p(base, "embed_tokens"),), (*norms, _p(base, "norm")),
                        heads[0], heads[1])


# --------------------------------------------------------------------------- analysis


def record_stream(model: nn.Module, tr: Tracker, why: str) -> bool:
    """Fill ``tr`` from the registered layers and ``model``'s declared residual stream (one group:
    the hidden size); without a layout that accounts for every parameter, the hidden size is kept
    (:func:`~secateur.structured.attention.record_blocks`). False if no layer is known."""
    layout = stream_of(model)
    if layout is not None:
        saved = tr.snapshot()
        _record(model, tr, layout)
        missing = _unaccounted(model, tr, layout)
        if not missing:
            tr.notes.append(f"{why}: pruned the heads, MLP neurons and hidden size ({layout.width}) of its declared "
                            "residual stream (secateur.structured.hf_hidden); pruned LayerNorms / RMSNorms normalise "
                            "over the kept channels only")
            return True
        tr.restore(saved)
        why = f"{why} (hidden size kept: {missing!r} is not on its declared residual stream)"
    return record_blocks(model, tr, why)


def _record(model: nn.Module, tr: Tracker, layout: StreamLayout) -> None:
    """One tag per stream channel, recorded on every tensor that reads or writes it."""
    stream = tr.uf.new(layout.width)
    tr.record(layout.base, "out", stream)  # first: it names the group; surgery sets the config's size
    for path in layout.embeddings:
        key = param_key(_p(path, "weight"), 1)
        tr.record(key, "param", stream)
        tr.producers[key] = stream
    for path in layout.norms:
        for name in ("weight", "bias"):
            if isinstance(getattr(model.get_submodule(path), name, None), torch.Tensor):
                tr.record(param_key(_p(path, name), 0), "param", stream)
    for path, found in blocks(model):
        if isinstance(found, MlpLayout):
            tr.lock_labels(label_layer(tr, path, found, None, 0))
            for fc in found.fc:
                tr.record(_p(path, fc), "in", stream)
            tr.record(_p(path, found.down), "out", stream)
        elif isinstance(found, HeadLayout):  # (a layer recording its own channels is left unaccounted)
            label_layer(tr, path, found, (0, stream), 1)
            tr.record(_p(path, found.output[0]), "out", stream)
    for path in layout.readers:
        tr.record(path, "in", stream)


def _unaccounted(model: nn.Module, tr: Tracker, layout: StreamLayout) -> str | None:
    """The first parameter that neither a record nor ``layout.outside`` covers (None if none)."""
    modules = {path for path, _ in tr.records if split_param_key(path) is None}
    params = {found[0] for path, _ in tr.records if (found := split_param_key(path)) is not None}
    for name, _ in model.named_parameters(remove_duplicate=False):
        owner = name.rpartition(".")[0]
        if name in params or owner in modules or any(owner == o or owner.startswith(o + ".") for o in layout.outside):
            continue
        return name
    return None


# --------------------------------------------------------------------------- surgery


def edits(path: str, m: nn.Module, out: list[int] | None, inp: list[int] | None) -> list[Edit] | None:
    """The edits of a base model whose stream loses channels: its config's hidden size and the
    size attributes of its modules (``embed_dim``, ``hidden_size``); None when ``m`` is not one."""
    config: Any = getattr(m, "config", None)
    if config is None or stream_of(m) is None or inp is not None or out is None:
        return None
    old, new = int(config.hidden_size), len(out)
    name = getattr(config, "attribute_map", {}).get("hidden_size", "hidden_size")
    found: list[Edit] = [(config, name, new)]
    for sub in m.modules():
        found += [(sub, attr, new) for attr in SIZE_ATTRIBUTES if getattr(sub, attr, None) == old
                  and isinstance(getattr(sub, attr), int) and attr not in sub._parameters]
    return found
