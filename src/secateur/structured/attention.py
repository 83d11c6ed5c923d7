"""Attention heads and transformer MLP neurons as coupled channels.

An attention layer's channels cannot be followed op by op: its projections are reshaped into
heads, and the query / key / value rows and the output projection's columns of one head live
or die together. Each supported layout is an :class:`AttentionHandler` registered in
:data:`ATTENTION_LAYERS`; it reads a module's :class:`HeadLayout` (or :class:`MlpLayout`) from
its attributes, and the analysis records, in one step, which rows and columns belong to which
head:

- ``torch-mha``: ``nn.MultiheadAttention`` with its packed ``in_proj`` (torchvision ViT);
- ``torchvision-swin``: Swin's ``ShiftedWindowAttention`` (``qkv`` / ``proj`` Linear layers and
  the relative position bias table's per-head column); ``torchvision-swin-v2`` (its V2, with a
  per-head logit scale and position-bias MLP row) lives in :mod:`secateur.structured.swin`;
- ``hf-bert``, ``hf-gpt2``, ``hf-llama``: Hugging Face BERT-style (``self.query`` / ``key`` /
  ``value`` + ``output.dense``), GPT-2-style (packed ``Conv1D`` ``c_attn``, weights stored
  (in, out)) and LLaMA-style (``q_proj`` ... ``o_proj``) attention, grouped-query included;
- ``timm-xca``: timm's ``CrossCovarianceAttn`` (EdgeNeXt): channel attention per head, a
  temperature per head, a forward that reads the head width from its input (a pruned one becomes
  a subclass whose forward reads it from its heads);
- ``hf-gpt2-mlp``, ``hf-llama-mlp``, ``hf-bert-mlp``: their MLP hidden neurons;
- layouts in modules of their own, named in the registry's builtins (``torchvision-swin-v2`` in
  :mod:`secateur.structured.swin`, ``torchvision-maxvit`` in
  :mod:`secateur.structured.attention_maxvit`, ``timm-linear-attention`` in
  :mod:`secateur.structured.attention_mobilevit`, ``timm-vit``, ``timm-eva``, ``timm-rope``,
  ``timm-maxxvit``, ``timm-convit-gpsa``, ``timm-convit-mhsa`` in :mod:`secateur.structured.attention_timm`), each
  with its editor (``edit=``); a layout
  that is neither a :class:`HeadLayout` nor an :class:`MlpLayout` is an :class:`OwnLayout`,
  which records its channels itself.

A head is one coupled channel (``union_rows`` of its positions), so a group's ``size`` is its
number of heads and every group method scores a head by summing its rows' and columns' scores.
What one channel is comes from :data:`ATTENTION_UNITS` (the ``attention`` option): ``heads``, or
``head-dims``, where dimension j of every head is one channel (every head keeps the same
dimensions, ``head_dim`` follows, the softmax scale is kept; layouts flagged ``head_dims``).
With grouped-query attention a key / value head and the query heads that share it are one
channel; with a single shared key / value head (multi-query) query heads are pruned alone.

Attention layers are traced as single ops (leaves, :func:`is_leaf`). Where a model's own
forward cannot be traced at all (Hugging Face models), :func:`record_blocks` builds the
groups from the registered layers alone: heads and MLP neurons are pruned, the hidden size
(the residual stream) is kept unless :mod:`secateur.structured.hf_hidden` declares it.
After surgery (:func:`edits`) the layers' own attributes (``num_heads``,
``num_attention_heads``, ``split_size`` ...) match their new shapes; the two
layers whose torch / torchvision forward ties the head count to the embedding size become
:class:`PrunedMultiheadAttention` / :class:`PrunedShiftedWindowAttention` (subclasses with the
same parameters that compute the same attention for any head count).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from secateur.registry import Registry
from secateur.structured.tracker import Labels, Tracker

Edit = tuple[nn.Module, str, Any]  # (module, attribute / parameter name, new value)


@dataclass(frozen=True)
class Rescale:
    """An edit's value meaning: this tensor, as the surgery's other edits leave it, times ``factor``
    (a query projection that takes over the softmax scale of a narrower head)."""

    factor: float


@dataclass(frozen=True)
class Slot:
    """Where one projection sits: a module path relative to the layer, a role, an offset."""

    path: str
    role: str  # "out": rows (outputs); "in": columns (inputs)
    offset: int = 0


@dataclass(frozen=True)
class HeadLayout:
    """An attention layer's heads: counts, the slots of q / k / v rows and output columns."""

    heads: int
    kv_heads: int
    head_dim: int
    q: Slot
    k: Slot
    v: Slot
    o: Slot
    inputs: tuple[str, ...]  # modules reading the layer's input (their columns)
    output: tuple[str, int]  # the module writing the layer's output and its width
    owner: str | None  # the module whose head attributes follow (None: the packed q/k/v module itself)
    head_first: bool = False  # packed q / k / v rows head by head ([q_h, k_h, v_h] ...), not q block first
    channel_dim: int = -1  # the dim of the layer's input and output channels (1: NCHW)
    head_dims: bool = False  # its editor can also shrink the per-head dimension, keeping the softmax scale


@dataclass(frozen=True)
class MlpLayout:
    """A transformer MLP: layers producing the hidden neurons and the one consuming them."""

    hidden: int
    fc: tuple[str, ...]
    down: str


class OwnLayout:
    """A layer whose coupled channels fit neither form above: it records them itself."""

    def label(self, tr: Tracker, path: str, in_lab: Labels | None, ndim: int) -> Labels | None:
        """Record the layer's channels (its input's labels ``in_lab``); its output's labels."""
        raise NotImplementedError


Layout = HeadLayout | MlpLayout | OwnLayout


@dataclass(frozen=True)
class AttentionHandler:
    """A registered layer layout: ``layout(module)`` (None if it does not apply),
    ``leaf``: traced as one op (attention) or only used when the model cannot be traced (MLPs),
    and ``edit(path, module, kept out, kept in) -> edits`` shrinking its own attributes (None:
    the built-in editors of this module)."""

    name: str
    layout: Callable[[nn.Module], Layout | None]
    leaf: bool = True
    # edit(path, module, kept out, kept in) -> the layer's own edits after surgery (None: see _EDITORS)
    edit: Callable[..., list[Edit]] | None = None


# layouts in modules of their own register on first use (the built-in ones below at import)
ATTENTION_LAYERS: Registry[AttentionHandler] = Registry(
    "attention layer", builtins=("secateur.structured.swin", "secateur.structured.attention_maxvit",
                                 "secateur.structured.attention_mobilevit", "secateur.structured.attention_timm"))


def attention_layer(name: str, *, leaf: bool = True, edit: Callable[..., list[Edit]] | None = None
                    ) -> Callable[[Callable[[nn.Module], Layout | None]], Callable[[nn.Module], Layout | None]]:
    """Decorator: register a layout function as an attention (or MLP) layer handler, with the
    editor of the layer's own attributes (head counts, bias tables, its pruned class) if it has one."""

    def decorate(layout: Callable[[nn.Module], Layout | None]) -> Callable[[nn.Module], Layout | None]:
        doc = (layout.__doc__ or "").strip().splitlines()[0] if layout.__doc__ else ""
        ATTENTION_LAYERS.add(name, AttentionHandler(name, layout, leaf, edit), doc)
        return layout

    return decorate


def layout_of(m: nn.Module, *, leaf_only: bool = True) -> Layout | None:
    """The layout of ``m`` from the first handler that recognises it (None if none does)."""
    for name in ATTENTION_LAYERS:
        handler = ATTENTION_LAYERS.get(name)
        if leaf_only and not handler.leaf:
            continue
        found = handler.layout(m)
        if found is not None:
            return found
    return None


def is_leaf(m: nn.Module) -> bool:
    """Whether the tracer should keep ``m`` as one op (a recognised attention layer)."""
    return layout_of(m) is not None


# --------------------------------------------------------------------------- layouts


def _linear(m: Any) -> bool:
    return isinstance(m, nn.Linear)


def _conv1d(m: Any) -> bool:
    """Hugging Face's ``Conv1D``: a Linear whose weight is stored (in, out)."""
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and tuple(w.shape) == (getattr(m, "nx", -1), getattr(m, "nf", -1)))


def _stored_scale(m: Any) -> bool:
    """Whether the layer's forward reads its softmax scale from a number it holds (Hugging Face's
    ``scaling``): then the per-head dimension can shrink while the scale stays the original's."""
    return isinstance(getattr(m, "scaling", None), float)


@attention_layer("torch-mha")
def _mha(m: Any) -> Layout | None:
    """nn.MultiheadAttention with a packed in_proj (torchvision ViT)."""
    if not isinstance(m, nn.MultiheadAttention) or not m._qkv_same_embed_dim or m.in_proj_weight is None:
        return None
    if m.bias_k is not None or m.add_zero_attn:
        return None
    h, d = m.num_heads, m.head_dim
    inner = h * d
    return HeadLayout(h, h, d, Slot("", "out", 0), Slot("", "out", inner), Slot("", "out", 2 * inner),
                      Slot("out_proj", "in"), ("",), ("out_proj", m.out_proj.out_features), None, head_dims=True)


@attention_layer("torchvision-swin")
def _swin(m: Any) -> Layout | None:
    """torchvision Swin's ShiftedWindowAttention (V1): qkv / proj Linear, per-head bias table."""
    if type(m) not in (ShiftedWindowAttention, PrunedShiftedWindowAttention):
        return None
    h = m.num_heads
    d = m.qkv.out_features // (3 * h)
    inner = h * d
    return HeadLayout(h, h, d, Slot("qkv", "out", 0), Slot("qkv", "out", inner), Slot("qkv", "out", 2 * inner),
                      Slot("proj", "in"), ("qkv", ""), ("proj", m.proj.out_features), "", head_dims=True)


@attention_layer("hf-bert")
def _bert(m: Any) -> Layout | None:
    """Hugging Face BERT-style attention: self.query / key / value and output.dense Linear layers."""
    sa: Any = getattr(m, "self", None)
    out: Any = getattr(m, "output", None)
    if not (sa is not None and all(_linear(getattr(sa, p, None)) for p in ("query", "key", "value"))
            and _linear(getattr(out, "dense", None)) and hasattr(sa, "num_attention_heads")):
        return None
    h, d = int(sa.num_attention_heads), int(sa.attention_head_size)
    return HeadLayout(h, h, d, Slot("self.query", "out"), Slot("self.key", "out"), Slot("self.value", "out"),
                      Slot("output.dense", "in"), ("self.query", "self.key", "self.value"),
                      ("output.dense", out.dense.out_features), "self", head_dims=_stored_scale(sa))


@attention_layer("hf-gpt2")
def _gpt2(m: Any) -> Layout | None:
    """Hugging Face GPT-2-style attention: a packed Conv1D c_attn and c_proj (self-attention only)."""
    if not (_conv1d(getattr(m, "c_attn", None)) and _conv1d(getattr(m, "c_proj", None))
            and hasattr(m, "split_size") and not getattr(m, "is_cross_attention", False)):
        return None
    h, d, split = int(m.num_heads), int(m.head_dim), int(m.split_size)
    return HeadLayout(h, h, d, Slot("c_attn", "out", 0), Slot("c_attn", "out", split),
                      Slot("c_attn", "out", 2 * split), Slot("c_proj", "in"), ("c_attn",),
                      ("c_proj", m.c_proj.nf), "", head_dims=_stored_scale(m))


@attention_layer("hf-llama")
def _llama(m: Any) -> Layout | None:
    """Hugging Face LLaMA-style attention: q_proj / k_proj / v_proj / o_proj, grouped-query included."""
    if not (all(_linear(getattr(m, p, None)) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and hasattr(m, "head_dim") and hasattr(m, "num_key_value_groups")):
        return None
    d = int(m.head_dim)
    h, kv = m.q_proj.out_features // d, m.k_proj.out_features // d
    return HeadLayout(h, kv, d, Slot("q_proj", "out"), Slot("k_proj", "out"), Slot("v_proj", "out"),
                      Slot("o_proj", "in"), ("q_proj", "k_proj", "v_proj"), ("o_proj", m.o_proj.out_features), "")


@attention_layer("qkv-proj")
def _qkv_proj(m: Any) -> Layout | None:
    """Separate q / k / v / proj Linear layers with ``num_heads`` and ``head_dim`` read by the forward
    (secateur's ``vit-mnist``, and the same pattern in your own models)."""
    if not (all(_linear(getattr(m, p, None)) for p in ("q", "k", "v", "proj"))
            and isinstance(getattr(m, "num_heads", None), int) and isinstance(getattr(m, "head_dim", None), int)):
        return None
    h, d = int(m.num_heads), int(m.head_dim)
    if m.q.out_features != h * d or m.k.out_features != h * d or m.v.out_features != h * d:
        return None
    return HeadLayout(h, h, d, Slot("q", "out"), Slot("k", "out"), Slot("v", "out"), Slot("proj", "in"),
                      ("q", "k", "v"), ("proj", m.proj.out_features), "", head_dims=True)


@attention_layer("timm-xca")
def _xca(m: Any) -> Layout | None:
    """timm's CrossCovarianceAttn (EdgeNeXt, XCiT): packed qkv / proj Linear, channel attention per
    head, a temperature per head; its forward reads the head width from its input, so a pruned one
    becomes a :func:`pruned_xca` subclass."""
    if not any(c.__name__ == "CrossCovarianceAttn" for c in type(m).__mro__):
        return None
    qkv: Any = getattr(m, "qkv", None)
    proj: Any = getattr(m, "proj", None)
    h = getattr(m, "num_heads", None)
    temp = m._parameters.get("temperature")  # not getattr: while fx traces, that gives a proxy
    if not (_linear(qkv) and _linear(proj) and isinstance(h, int) and isinstance(temp, torch.Tensor)
            and tuple(temp.shape) == (h, 1, 1) and qkv.out_features % (3 * h) == 0):
        return None
    inner = qkv.out_features // 3
    return HeadLayout(h, h, inner // h, Slot("qkv", "out", 0), Slot("qkv", "out", inner),
                      Slot("qkv", "out", 2 * inner), Slot("proj", "in"), ("qkv", ""), ("proj", proj.out_features), "")


@attention_layer("hf-gpt2-mlp", leaf=False)
def _gpt2_mlp(m: Any) -> Layout | None:
    """Hugging Face GPT-2-style MLP hidden neurons: Conv1D c_fc -> c_proj."""
    fc: Any = getattr(m, "c_fc", None)
    proj: Any = getattr(m, "c_proj", None)
    if not (_conv1d(fc) and _conv1d(proj)) or hasattr(m, "c_attn"):
        return None
    return MlpLayout(int(fc.nf), ("c_fc",), "c_proj")


@attention_layer("hf-llama-mlp", leaf=False)
def _llama_mlp(m: Any) -> Layout | None:
    """Hugging Face LLaMA-style gated MLP hidden neurons: gate_proj, up_proj -> down_proj."""
    if not all(_linear(getattr(m, p, None)) for p in ("gate_proj", "up_proj", "down_proj")):
        return None
    return MlpLayout(m.gate_proj.out_features, ("gate_proj", "up_proj"), "down_proj")


@attention_layer("hf-bert-mlp", leaf=False)
def _bert_mlp(m: Any) -> Layout | None:
    """Hugging Face BERT-style layer's MLP hidden neurons: intermediate.dense -> output.dense."""
    fc: Any = getattr(getattr(m, "intermediate", None), "dense", None)
    down: Any = getattr(getattr(m, "output", None), "dense", None)
    if not (_linear(fc) and _linear(down) and hasattr(m, "attention")):
        return None
    return MlpLayout(fc.out_features, ("intermediate.dense",), "output.dense")


# --------------------------------------------------------------------------- attention units

Couple = Callable[[Tracker, str, HeadLayout, torch.Tensor, torch.Tensor, torch.Tensor], None]

# what one channel of an attention layer is (the ``attention`` option): couple(tracker, path, layout,
# q tags, k tags, v tags) merges the layer's query / key / value positions into channels
ATTENTION_UNITS: Registry[Couple] = Registry("attention unit")


@ATTENTION_UNITS.register("heads", "whole heads: a head's query / key / value rows and output columns "
                                   "(with grouped-query attention, a key / value head with its query heads)")
def _whole_heads(tr: Tracker, path: str, lay: HeadLayout, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """One coupled channel per head (per key / value group with grouped-query attention)."""
    h, kv, d = lay.heads, lay.kv_heads, lay.head_dim
    per = h // kv
    if kv == 1 and per > 1:  # multi-query: the one key / value head stays, query heads go alone
        tr.uf.union_rows(q.reshape(h, d))
        tr.uf.lock(k)
        tr.uf.lock(v)
    else:
        tr.uf.union_rows(torch.cat([q.reshape(kv, per * d), k.reshape(kv, d), v.reshape(kv, d)], dim=1))


@ATTENTION_UNITS.register("head-dims", "the per-head dimension: dimension j of every head's query, key and "
                                       "value (the heads and their count stay; the softmax scale is kept)")
def _head_dims(tr: Tracker, path: str, lay: HeadLayout, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """One coupled channel per dimension index: every head keeps the same ``head_dim`` dimensions, as
    the layer's one ``head_dim`` attribute needs. A layout that cannot shrink it keeps them all."""
    h, kv, d = lay.heads, lay.kv_heads, lay.head_dim
    if not lay.head_dims:
        why = (f"attention layer {path!r}: its layout cannot shrink the per-head dimension (a rotary position "
               "embedding pairs them, or its pruned forward is written for whole heads); its attention is kept whole")
        tr.lock_labels([(0, q), (0, k), (0, v)], why, ("head-dims", path))
        return
    tr.uf.union_rows(torch.cat([q.reshape(h, d).t(), k.reshape(kv, d).t(), v.reshape(kv, d).t()], dim=1))


# --------------------------------------------------------------------------- labels


def _join(path: str, rel: str) -> str:
    return ".".join(p for p in (path, rel) if p)


def label_layer(tr: Tracker, path: str, layout: Layout, in_lab: Labels | None, ndim: int) -> Labels | None:
    """Record the layer's coupled channels; the labels of its output (on its last dim), if any."""
    if isinstance(layout, OwnLayout):
        return layout.label(tr, path, in_lab, ndim)
    if isinstance(layout, MlpLayout):
        hidden = tr.uf.new(layout.hidden)
        for fc in layout.fc:
            tr.record(_join(path, fc), "out", hidden)
        tr.record(_join(path, layout.down), "in", hidden)
        return None
    _record_heads(tr, path, layout)
    channels = layout.channel_dim % ndim if ndim else -1
    if in_lab is not None and in_lab[0] == channels:
        for name in layout.inputs:
            tr.record(_join(path, name), "in", in_lab[1])
    else:
        tr.lock_labels(in_lab)
    module, width = layout.output
    out = tr.produce(_join(path, module), width)
    tr.record(_join(path, module), "out", out)
    return (channels, out)


def _record_heads(tr: Tracker, path: str, lay: HeadLayout) -> None:
    """The layer's q / k / v positions, coupled into channels by the tracker's attention unit."""
    h, kv, d = lay.heads, lay.kv_heads, lay.head_dim
    q, k, v = tr.uf.new(h * d), tr.uf.new(kv * d), tr.uf.new(kv * d)
    ATTENTION_UNITS.get(tr.attention)(tr, path, lay, q, k, v)
    pieces = [(lay.q, q), (lay.k, k), (lay.v, v), (lay.o, q)]
    if lay.owner is not None:
        pieces.append((Slot(lay.owner, "out"), q))
    by_key: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = {}
    for slot, tags in pieces:
        by_key.setdefault((_join(path, slot.path), slot.role), []).append((slot.offset, tags))
    for (module, role), parts in by_key.items():
        ordered = [t for _, t in sorted(parts, key=lambda p: p[0])]
        if lay.head_first and len(ordered) > 1:  # one block per (key / value) head: its q, k, v rows
            tr.record(module, role, torch.cat([t.reshape(kv, -1) for t in ordered], dim=1).reshape(-1))
        else:
            tr.record(module, role, torch.cat(ordered))


def blocks(model: nn.Module) -> Iterator[tuple[str, Layout]]:
    """Every registered attention / MLP layer of ``model`` with its layout, in module order."""
    for path, m in model.named_modules():
        found = layout_of(m, leaf_only=False)
        if found is not None:
            yield path, found


def record_blocks(model: nn.Module, tr: Tracker, why: str) -> bool:
    """Fill ``tr`` from the registered layers alone (for a model whose forward fx cannot trace).

    Heads and MLP neurons are internal to their layers, so they are pruned exactly; the
    layers' inputs and outputs (the residual stream) are kept. False if no layer is known.
    """
    found = list(blocks(model))
    if not found:
        return False
    for path, layout in found:
        tr.lock_labels(label_layer(tr, path, layout, None, 0))
    tr.notes.append(f"{why}: pruned only the heads and MLP neurons of its {len(found)} registered attention / MLP "
                    "layers (secateur.structured.attention); the hidden size is kept")
    return True


# --------------------------------------------------------------------------- embedding attributes


@dataclass(frozen=True)
class EmbeddingAttribute:
    """A model whose forward reads its embedding size from an attribute as a literal (torchvision
    ViT's ``hidden_dim`` in a ``reshape``): traced as ``-1`` so the channels are followed, and set
    to the kept count by surgery (the model records the producer's output channels)."""

    kind: type
    attribute: str
    producer: str  # the layer (relative path) whose outputs are the embedding channels


def _embedding_attributes() -> tuple[EmbeddingAttribute, ...]:
    from torchvision.models.vision_transformer import VisionTransformer

    return (EmbeddingAttribute(VisionTransformer, "hidden_dim", "conv_proj"),)


def _embedded(model: nn.Module) -> Iterator[tuple[str, nn.Module, EmbeddingAttribute]]:
    for path, m in model.named_modules():
        for rule in _embedding_attributes():
            if type(m).__mro__[0] is rule.kind:  # exactly the class (a subclass may read other attributes)
                yield path, m, rule


@contextlib.contextmanager
def tracing_embeddings(model: nn.Module) -> Iterator[None]:
    """Within the block, embedding-size attributes read as literals are ``-1`` (see above)."""
    saved = [(m, rule.attribute, getattr(m, rule.attribute)) for _, m, rule in _embedded(model)]
    try:
        for m, name, _ in saved:
            object.__setattr__(m, name, -1)
        yield
    finally:
        for m, name, value in saved:
            object.__setattr__(m, name, value)


def record_embeddings(model: nn.Module, tr: Tracker) -> None:
    """Record each such model's embedding channels on the model itself (its attribute follows)."""
    for path, _, rule in _embedded(model):
        tags = tr.producers.get(_join(path, rule.producer))
        if tags is not None:
            tr.record(path, "out", tags)


def _embedding_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    rule = next(r for r in _embedding_attributes() if type(m) is r.kind)
    return [] if out is None else [(m, rule.attribute, len(out))]


# --------------------------------------------------------------------------- weights for the scores


def weight_view(m: nn.Module, role: str) -> torch.Tensor | None:
    """``m``'s weight as [positions of ``role``, rest] for layers whose weight is not a plain
    ``weight`` (out, in) (packed MHA in_proj, Conv1D); None for every other layer."""
    if isinstance(m, nn.MultiheadAttention) and isinstance(m.in_proj_weight, torch.Tensor):
        w = m.in_proj_weight.detach()
    elif _conv1d(m) and isinstance(m.weight, torch.Tensor):
        w = m.weight.detach().t()
    else:
        return None
    return w if role != "in" else w.t()


# --------------------------------------------------------------------------- surgery


def _positions(idx: list[int], size: int, what: str) -> torch.Tensor:
    from secateur.errors import ConfigError

    if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= size:
        raise ConfigError(f"plan keeps invalid {what} indices (size {size}): need distinct values in [0, {size})")
    return torch.tensor(sorted(idx), dtype=torch.long)


def _param(t: torch.Tensor | None, dim: int, idx: torch.Tensor) -> Any:
    if t is None:
        return None
    new = t.detach().index_select(dim, idx.to(t.device)).clone()
    return nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new


def _kept_heads(kept: list[int], d: int, path: str) -> list[int]:
    """Heads kept, checking that the plan keeps whole heads."""
    from secateur.errors import ConfigError

    heads = sorted({i // d for i in kept})
    if len(kept) != len(heads) * d:
        raise ConfigError(f"plan for attention layer {path!r} does not keep whole heads of {d}")
    return heads


def _kept_grid(kept: list[int], h: int, d: int, path: str) -> tuple[list[int], list[int]]:
    """Heads and per-head dimensions kept by rows over ``h`` heads of ``d``: a whole grid (the same
    dimensions in every kept head), as one ``num_heads`` and one ``head_dim`` attribute need."""
    from secateur.errors import ConfigError

    heads, dims = sorted({i // d for i in kept}), sorted({i % d for i in kept})
    if sorted(kept) != [a * d + j for a in heads for j in dims] or (heads and heads[-1] >= h):
        raise ConfigError(f"plan for attention layer {path!r} keeps neither whole heads of {d} nor the same "
                          "dimensions in every kept head")
    return heads, dims


def _packed_grid(rows: list[int], h: int, d: int, path: str) -> tuple[list[int], list[int]]:
    """Heads and dimensions kept by packed q / k / v rows: the same grid in q, k and v."""
    from secateur.errors import ConfigError

    inner = h * d
    parts = [_kept_grid([i - s * inner for i in rows if s * inner <= i < (s + 1) * inner], h, d, path)
             for s in range(3)]
    if not parts[0][0] or parts[0] != parts[1] or parts[0] != parts[2]:
        raise ConfigError(f"plan for attention layer {path!r} does not keep whole heads (the same in q, k and v)")
    return parts[0]


def _scale_edits(m: nn.Module, d: int, dims: list[int]) -> list[Edit]:
    """With fewer per-head dimensions, the forward of a pruned class keeps the original softmax scale."""
    if len(dims) == d:
        return []
    return [(m, "head_scale", float(getattr(m, "head_scale", d ** -0.5)))]


def _mha_edits(path: str, m: nn.MultiheadAttention, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    w, b, edits = m.in_proj_weight, m.in_proj_bias, []
    if out is not None:
        rows = _positions(out, w.shape[0], f"{path!r} in_proj row")
        heads, dims = _packed_grid(out, m.num_heads, m.head_dim, path)
        w, b = _param(w, 0, rows), _param(b, 0, rows)
        edits += [(m, "num_heads", len(heads)), (m, "head_dim", len(dims)), (m, "in_proj_bias", b),
                  *_scale_edits(m, m.head_dim, dims)]
    if inp is not None:
        cols = _positions(inp, w.shape[1], f"{path!r} in_proj column")
        w = _param(w, 1, cols)
        edits += [(m, "embed_dim", len(cols)), (m, "kdim", len(cols)), (m, "vdim", len(cols))]
    return [*edits, (m, "in_proj_weight", w), (m, "__class__", PrunedMultiheadAttention)]


def _swin_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    if out is None:  # the embedding only: torchvision's forward ties the head size to it
        return [] if inp is None else [(m, "__class__", PrunedShiftedWindowAttention)]
    d = m.qkv.out_features // (3 * m.num_heads)
    heads, dims = _kept_grid(out, m.num_heads, d, path)
    table = _param(m.relative_position_bias_table, 1, torch.tensor(heads))
    return [(m, "relative_position_bias_table", table), (m, "num_heads", len(heads)),
            *_scale_edits(m, d, dims), (m, "__class__", PrunedShiftedWindowAttention)]


def _bert_self_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    if out is None:
        return []
    heads, dims = _kept_grid(out, int(m.num_attention_heads), int(m.attention_head_size), path)
    return [(m, "num_attention_heads", len(heads)), (m, "attention_head_size", len(dims)),
            (m, "all_head_size", len(heads) * len(dims))]


def _gpt2_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    if out is None:
        return []
    heads, dims = _kept_grid(out, int(m.num_heads), int(m.head_dim), path)
    return [(m, "num_heads", len(heads)), (m, "head_dim", len(dims)), (m, "split_size", len(heads) * len(dims))]


def _llama_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    if out is None:
        return []
    d, per = int(m.head_dim), int(m.num_key_value_groups)
    heads = len(_kept_heads(out or [], d, path))
    kv_now = m.k_proj.out_features // d
    if kv_now == 1 and per > 1:  # multi-query: query heads pruned alone, the key / value head kept
        return [(m, "num_heads", heads), (m, "num_key_value_heads", 1), (m, "num_key_value_groups", heads)]
    return [(m, "num_heads", heads), (m, "num_key_value_heads", heads // per)]


def _qkv_proj_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """Head count and width follow; a forward that derives its softmax scale from the width (no
    ``scale`` / ``scaling`` number held) gets the old scale folded into its query rows."""
    if out is None:
        return []
    d = int(m.head_dim)
    heads, dims = _kept_grid(out, int(m.num_heads), d, path)
    edits: list[Edit] = [(m, "num_heads", len(heads)), (m, "head_dim", len(dims))]
    held = any(isinstance(getattr(m, name, None), float) for name in ("scale", "scaling"))
    if len(dims) < d and not held:
        factor = Rescale((len(dims) / d) ** 0.5)
        edits += [(m.q, name, factor) for name in ("weight", "bias") if getattr(m.q, name, None) is not None]
    return edits


def _xca_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    edits: list[Edit] = [(m, "__class__", pruned_xca(type(m)))]
    if out is not None:
        heads = _kept_heads(out, m.qkv.out_features // (3 * m.num_heads), path)
        edits += [(m, "num_heads", len(heads)), (m, "temperature", _param(m.temperature, 0, torch.tensor(heads)))]
    return edits


def _conv1d_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    w, edits = m.weight, []
    if out is not None:
        o = _positions(out, m.nf, f"{path!r} output")
        w = _param(w, 1, o)
        edits += [(m, "nf", len(o)), (m, "bias", _param(m.bias, 0, o))]
    if inp is not None:
        i = _positions(inp, m.nx, f"{path!r} input")
        w = _param(w, 0, i)
        edits.append((m, "nx", len(i)))
    return [*edits, (m, "weight", w)]


def _is_bert_self(m: nn.Module) -> bool:
    return hasattr(m, "num_attention_heads") and hasattr(m, "all_head_size") and _linear(getattr(m, "query", None))


_EDITORS: list[tuple[Callable[[nn.Module], bool], Callable[..., list[Edit]]]] = [
    (lambda m: _mha(m) is not None, _mha_edits),
    (lambda m: _swin(m) is not None, _swin_edits),
    (_is_bert_self, _bert_self_edits),
    (lambda m: _gpt2(m) is not None, _gpt2_edits),
    (lambda m: _llama(m) is not None, _llama_edits),
    (lambda m: _qkv_proj(m) is not None, _qkv_proj_edits),
    (lambda m: _xca(m) is not None, _xca_edits),
    (_conv1d, _conv1d_edits),
    (lambda m: any(type(m) is r.kind for r in _embedding_attributes()), _embedding_edits),
]


def edits(path: str, m: nn.Module, out: list[int] | None, inp: list[int] | None) -> list[Edit] | None:
    """The edits that shrink ``m`` (an attention layer or a Conv1D) to the kept indices; None
    when ``m`` is none of these."""
    for name in ATTENTION_LAYERS:  # registered editors first (loads the layouts in their own modules)
        handler = ATTENTION_LAYERS.get(name)
        if handler.edit is not None and handler.layout(m) is not None:
            return handler.edit(path, m, out, inp)
    for matches, edit in _EDITORS:
        if matches(m):
            return edit(path, m, out, inp)
    return None


# --------------------------------------------------------------------------- pruned forwards


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with heads removed (``num_heads * head_dim`` below ``embed_dim``).

    torch's forward requires the two equal; this one computes the same attention for any head
    count, with the same parameters (packed ``in_proj``, no ``bias_k`` / ``add_zero_attn``).
    """

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        h, d = self.num_heads, self.head_dim
        w = self.in_proj_weight.split(h * d)
        b = self.in_proj_bias.split(h * d) if self.in_proj_bias is not None else (None, None, None)
        tgt, bsz, src = query.shape[0], query.shape[1], key.shape[0]
        q, k, v = (F.linear(x, wi, bi).reshape(x.shape[0], bsz, h, d).permute(1, 2, 0, 3)
                   for x, wi, bi in zip((query, key, value), w, b))
        scores = (q * getattr(self, "head_scale", d ** -0.5)) @ k.transpose(-2, -1)
        mask = _additive(attn_mask, scores.dtype)
        if mask is not None:
            scores = scores + (mask.reshape(bsz, h, tgt, src) if mask.dim() == 3 else mask)
        pad = _additive(key_padding_mask, scores.dtype)
        if pad is not None:
            scores = scores + pad.reshape(bsz, 1, 1, src)
        attn = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = self.out_proj((attn @ v).permute(2, 0, 1, 3).reshape(tgt, bsz, h * d))
        out = out.squeeze(1) if unbatched else out.transpose(0, 1) if self.batch_first else out
        if not need_weights:
            return out, None
        weights = attn.mean(1) if average_attn_weights else attn
        return out, weights.squeeze(0) if unbatched else weights


class PrunedShiftedWindowAttention(ShiftedWindowAttention):
    """torchvision's ``ShiftedWindowAttention`` with heads removed (its functional form ties the
    head count to the embedding size); same parameters, same attention for any head count."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.get_relative_position_bias()
        b, hh, ww, _ = x.shape
        win = self.window_size
        x = F.pad(x, (0, 0, 0, (win[1] - ww % win[1]) % win[1], 0, (win[0] - hh % win[0]) % win[0]))
        _, ph, pw, c = x.shape
        shift = [0 if win[0] >= ph else self.shift_size[0], 0 if win[1] >= pw else self.shift_size[1]]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        n_win = (ph // win[0]) * (pw // win[1])
        x = x.view(b, ph // win[0], win[0], pw // win[1], win[1], c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b * n_win, win[0] * win[1], c)
        n, t, heads = x.shape[0], x.shape[1], self.num_heads
        d = self.qkv.out_features // (3 * heads)
        q, k, v = self._qkv(x).reshape(n, t, 3, heads, d).permute(2, 0, 3, 1, 4)
        attn = self._scores(q, k) + bias
        if sum(shift) > 0:
            mask = _shift_mask(x, ph, pw, win, shift)
            attn = (attn.view(n // n_win, n_win, heads, t, t) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, t, t)
        attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout, training=self.training)
        x = F.dropout(self.proj(attn.matmul(v).transpose(1, 2).reshape(n, t, heads * d)), p=self.dropout,
                      training=self.training)
        c = x.shape[-1]
        x = x.view(b, ph // win[0], pw // win[1], win[0], win[1], c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :hh, :ww, :].contiguous()

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """The packed query / key / value projection of the windows' tokens."""
        return self.qkv(x)

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Attention logits before the relative position bias (scaled dot products)."""
        return (q * getattr(self, "head_scale", q.shape[-1] ** -0.5)).matmul(k.transpose(-2, -1))


_PRUNED_XCA: dict[type, type] = {}


def pruned_xca(base: type) -> type:
    """The subclass of a CrossCovarianceAttn class whose forward takes the head width from its
    heads (``num_heads * head_dim`` may differ from the input's channels after pruning)."""
    if getattr(base, "forward", None) is _xca_forward:
        return base
    if base not in _PRUNED_XCA:
        _PRUNED_XCA[base] = type(f"Pruned{base.__name__}", (base,), {"forward": _xca_forward, "__module__": __name__})
    return _PRUNED_XCA[base]


def _xca_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 4, 1)
    q, k, v = qkv.unbind(0)
    attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
    attn = self.attn_drop(attn.softmax(dim=-1))
    x = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, -1)
    return self.proj_drop(self.proj(x))


def _shift_mask(x: torch.Tensor, ph: int, pw: int, win: list[int], shift: list[int]) -> torch.Tensor:
    """Swin's attention mask between the regions a cyclic shift brings into one window."""
    mask = x.new_zeros((ph, pw))
    h_slices = ((0, -win[0]), (-win[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -win[1]), (-win[1], -shift[1]), (-shift[1], None))
    for count, (hs, ws) in enumerate((hs, ws) for hs in h_slices for ws in w_slices):
        mask[hs[0]:hs[1], ws[0]:ws[1]] = count
    mask = mask.view(ph // win[0], win[0], pw // win[1], win[1]).permute(0, 2, 1, 3).reshape(-1, win[0] * win[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
