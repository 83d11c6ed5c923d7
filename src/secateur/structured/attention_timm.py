"""timm's attention layers as registered layouts (:data:`~secateur.structured.attention.ATTENTION_LAYERS`).

- ``timm-vit``: ``timm.layers.Attention`` (ViT, DeiT and the other ``vision_transformer`` models):
  a packed ``qkv`` Linear (q, k, v rows one after the other, ``num_heads`` heads of
  ``head_dim`` each) and ``proj``; its forward reads ``num_heads``, ``head_dim`` and
  ``attn_dim``, which surgery sets to the kept heads, so the module stays timm's own class;
- ``timm-maxxvit``: MaxViT / CoAtNet's ``AttentionCl`` (Linear, channels last) and ``Attention2d``
  (1x1 convs, NCHW), q / k / v packed head by head or block by block, their ``RelPosBias`` table
  keeping the kept heads' columns;
- ``timm-convit-gpsa``, ``timm-convit-mhsa``: ConViT's gated positional self-attention (its
  positional projection's rows and gates, one per head, follow) and multi-head self-attention;
- ``timm-eva``: EVA's ``EvaAttention`` (packed qkv with its own q / k / v biases, or separate
  projections; rotary embeddings);
- ``timm-rope``: ``timm.layers.AttentionRope`` (grouped-query attention included).

ConViT's and EVA's forwards tie the head width to the input width; after surgery those layers
become subclasses with the same parameters (``attention_timm_forwards``) that compute the same
attention for any head count. A layer is recognised by its class's name and module, without
importing timm (an analysis of a model without timm never loads it), and only in the forms whose
pruned heads stay exact: no LayerNorm over the heads' outputs (``scale_norm``), no gate. Other
forms are traced through as before (their heads kept).
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from secateur.structured.attention import Edit, HeadLayout, Layout, Slot, _kept_heads, _param, attention_layer


def _is(m: Any, names: tuple[tuple[str, str], ...]) -> bool:
    """Whether ``m`` is exactly one of the classes (module, class name) (a subclass may compute otherwise)."""
    return (type(m).__module__, type(m).__name__) in names


_VIT = (("timm.layers.attention", "Attention"), ("timm.models.vision_transformer", "Attention"))


def _vit_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """The head count and the attention width follow the kept heads (``head_dim`` is unchanged)."""
    if out is None:
        return []
    heads = len(_kept_heads(out, int(m.head_dim), path))
    return [(m, "num_heads", heads), (m, "attn_dim", heads * int(m.head_dim))]


@attention_layer("timm-vit", edit=_vit_edits)
def _timm_vit(m: Any) -> Layout | None:
    """timm's ViT / DeiT Attention: a packed qkv Linear and proj, num_heads / attn_dim read by its forward."""
    if not _is(m, _VIT):
        return None
    h, d = int(m.num_heads), int(m.head_dim)
    inner = h * d
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and qkv.out_features == 3 * inner
            and proj.in_features == inner and getattr(m, "attn_dim", None) == inner  # older timm: reshape to C
            and isinstance(getattr(m, "norm", None), nn.Identity) and getattr(m, "gate", None) is None):
        return None
    return HeadLayout(h, h, d, Slot("qkv", "out", 0), Slot("qkv", "out", inner), Slot("qkv", "out", 2 * inner),
                      Slot("proj", "in"), ("qkv",), ("proj", proj.out_features), "")


# --------------------------------------------------------------------------- maxxvit (MaxViT, CoAtNet)

_MAXXVIT = (("timm.models.maxxvit", "AttentionCl"), ("timm.models.maxxvit", "Attention2d"))
_REL_POS_BIAS = (("timm.layers.pos_embed_rel", "RelPosBias"),)


def _maxxvit_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """The head count follows; a relative position bias table keeps the kept heads' columns."""
    if out is None:
        return []
    heads = _kept_heads(out, int(m.dim_head), path)
    edits: list[Edit] = [(m, "num_heads", len(heads))]
    rel = m.rel_pos
    if rel is not None:
        table = _param(rel.relative_position_bias_table, 1, torch.tensor(heads))
        edits += [(rel, "relative_position_bias_table", table), (rel, "bias_shape", (*rel.bias_shape[:2], len(heads)))]
    return edits


def _widths(m: Any) -> tuple[int, int, int] | None:
    """(qkv outputs, proj inputs, proj outputs) of maxxvit's Linear (channels-last) or 1x1 Conv2d (NCHW) pair."""
    qkv, proj = m.qkv, m.proj
    if isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear):
        return qkv.out_features, proj.in_features, proj.out_features
    if isinstance(qkv, nn.Conv2d) and isinstance(proj, nn.Conv2d) and qkv.groups == proj.groups == 1:
        return qkv.out_channels, proj.in_channels, proj.out_channels
    return None


@attention_layer("timm-maxxvit", edit=_maxxvit_edits)
def _timm_maxxvit(m: Any) -> Layout | None:
    """timm's MaxViT / CoAtNet AttentionCl (Linear) and Attention2d (1x1 conv, NCHW), relative position bias too."""
    if not _is(m, _MAXXVIT) or not (m.rel_pos is None or _is(m.rel_pos, _REL_POS_BIAS)):
        return None
    h, d = int(m.num_heads), int(m.dim_head)
    inner = h * d
    widths = _widths(m)
    if widths is None or widths[:2] != (3 * inner, inner):
        return None
    step = d if m.head_first else inner  # head_first: rows [q_h, k_h, v_h] head by head
    return HeadLayout(h, h, d, Slot("qkv", "out", 0), Slot("qkv", "out", step), Slot("qkv", "out", 2 * step),
                      Slot("proj", "in"), ("qkv",), ("proj", widths[2]), "", head_first=bool(m.head_first),
                      channel_dim=1 if isinstance(m.qkv, nn.Conv2d) else -1)


# --------------------------------------------------------------------------- ConViT (GPSA, MHSA)

_FORWARDS = "secateur.structured.attention_timm_forwards"
_GPSA = (("timm.models.convit", "GPSA"), (_FORWARDS, "PrunedGPSA"))
_MHSA = (("timm.models.convit", "MHSA"), (_FORWARDS, "PrunedMHSA"))


def _pruned(name: str) -> type:
    """A pruned forward's class (its module imports timm, loaded already when such a layer is pruned)."""
    return getattr(importlib.import_module(_FORWARDS), name)


def _gpsa_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """Heads follow in num_heads, the positional projection's rows and the gates; the forward becomes PrunedGPSA's."""
    edits: list[Edit] = [(m, "__class__", _pruned("PrunedGPSA"))]
    if out is None:
        return edits
    heads = torch.tensor(_kept_heads(out, m.v.out_features // int(m.num_heads), path))
    pos = m.pos_proj
    return [(m, "num_heads", len(heads)), (m, "gating_param", _param(m.gating_param, 0, heads)),
            (pos, "weight", _param(pos.weight, 0, heads)), (pos, "bias", _param(pos.bias, 0, heads)),
            (pos, "out_features", len(heads)), *edits]


def _mhsa_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """The head count follows; the forward becomes PrunedMHSA's (head width from qkv, not the input)."""
    edits: list[Edit] = [(m, "__class__", _pruned("PrunedMHSA"))]
    if out is None:
        return edits
    return [(m, "num_heads", len(_kept_heads(out, m.qkv.out_features // (3 * int(m.num_heads)), path))), *edits]


def _shape(m: nn.Module, name: str) -> tuple[int, ...] | None:
    """A parameter's shape, read without ``getattr`` (fx returns a proxy while tracing)."""
    t = m._parameters.get(name)
    return None if t is None else tuple(t.shape)


def _linears(m: Any, *names: str) -> list[nn.Linear] | None:
    found = [getattr(m, n, None) for n in names]
    return found if all(isinstance(f, nn.Linear) for f in found) else None  # type: ignore[return-value]


@attention_layer("timm-convit-gpsa", edit=_gpsa_edits)
def _timm_gpsa(m: Any) -> Layout | None:
    """timm's ConViT gated positional self-attention (GPSA): packed qk, v, proj, per-head positional rows and gates."""
    layers = _linears(m, "qk", "v", "proj", "pos_proj") if _is(m, _GPSA) else None
    if layers is None:
        return None
    qk, v, proj, pos = layers
    h = int(m.num_heads)
    d = v.out_features // h
    if not (qk.out_features == 2 * h * d and v.out_features == proj.in_features == h * d
            and pos.out_features == h and _shape(m, "gating_param") == (h,)):
        return None
    return HeadLayout(h, h, d, Slot("qk", "out", 0), Slot("qk", "out", h * d), Slot("v", "out"), Slot("proj", "in"),
                      ("qk", "v"), ("proj", proj.out_features), "")


@attention_layer("timm-convit-mhsa", edit=_mhsa_edits)
def _timm_mhsa(m: Any) -> Layout | None:
    """timm's ConViT multi-head self-attention (MHSA): a packed qkv Linear and proj."""
    layers = _linears(m, "qkv", "proj") if _is(m, _MHSA) else None
    if layers is None:
        return None
    qkv, proj = layers
    h = int(m.num_heads)
    d = qkv.out_features // (3 * h)
    if not (qkv.out_features == 3 * h * d and proj.in_features == h * d):
        return None
    return HeadLayout(h, h, d, Slot("qkv", "out", 0), Slot("qkv", "out", h * d), Slot("qkv", "out", 2 * h * d),
                      Slot("proj", "in"), ("qkv",), ("proj", proj.out_features), "")


# --------------------------------------------------------------------------- EVA (EvaAttention), AttentionRope

_EVA = (("timm.models.eva", "EvaAttention"), (_FORWARDS, "PrunedEvaAttention"))
_ROPE = (("timm.layers.attention", "AttentionRope"),)


def _tensor(m: nn.Module, name: str) -> Any:
    """A parameter or buffer, read without ``getattr`` (fx returns a proxy while tracing); None if absent."""
    return m._parameters.get(name, m._buffers.get(name))


def _eva_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """The head count and the packed qkv's own q / k / v biases follow; the forward becomes PrunedEvaAttention's."""
    edits: list[Edit] = [(m, "__class__", _pruned("PrunedEvaAttention"))]
    if out is None:
        return edits
    heads = _kept_heads(out, int(m.head_dim), path)
    keep = torch.tensor(sorted(out))
    biases = [(m, n, _param(t, 0, keep)) for n in ("q_bias", "k_bias", "v_bias") if (t := _tensor(m, n)) is not None]
    return [(m, "num_heads", len(heads)), *biases, *edits]


def _separate(m: Any, h: int, kv: int, d: int) -> bool:
    """Separate q_proj / k_proj / v_proj Linear layers of h query and kv key / value heads of d."""
    layers = _linears(m, "q_proj", "k_proj", "v_proj")
    return layers is not None and [p.out_features for p in layers] == [h * d, kv * d, kv * d]


def _qkv_layout(m: Any, h: int, kv: int, d: int) -> HeadLayout | None:
    """The layout of a packed ``qkv`` (q, k, v blocks) or separate q / k / v projections, then ``proj``."""
    proj, inner, qkv = getattr(m, "proj", None), h * d, getattr(m, "qkv", None)
    if not isinstance(proj, nn.Linear) or proj.in_features != inner or not isinstance(m.norm, nn.Identity) \
            or getattr(m, "gate", None) is not None:
        return None
    if isinstance(qkv, nn.Linear) and qkv.out_features == 3 * inner and kv == h:
        return HeadLayout(h, h, d, Slot("qkv", "out", 0), Slot("qkv", "out", inner), Slot("qkv", "out", 2 * inner),
                          Slot("proj", "in"), ("qkv",), ("proj", proj.out_features), "")
    if qkv is None and _separate(m, h, kv, d):
        return HeadLayout(h, kv, d, Slot("q_proj", "out"), Slot("k_proj", "out"), Slot("v_proj", "out"),
                          Slot("proj", "in"), ("q_proj", "k_proj", "v_proj"), ("proj", proj.out_features), "")
    return None


@attention_layer("timm-eva", edit=_eva_edits)
def _timm_eva(m: Any) -> Layout | None:
    """timm's EVA attention: packed qkv (its q / k / v biases apart) or q / k / v projections, rotary embeddings too."""
    if not _is(m, _EVA):
        return None
    h, d = int(m.num_heads), int(m.head_dim)
    if any((t := _tensor(m, n)) is not None and tuple(t.shape) != (h * d,) for n in ("q_bias", "k_bias", "v_bias")):
        return None
    return _qkv_layout(m, h, h, d)


def _rope_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """Query and key / value head counts and widths follow (a single key / value head stays: its groups follow)."""
    if out is None:
        return []
    d, per = int(m.head_dim), int(m.num_kv_groups)
    heads = len(_kept_heads(out, d, path))
    kv = 1 if int(m.num_kv_heads) == 1 and per > 1 else heads // per
    return [(m, "num_heads", heads), (m, "num_kv_heads", kv), (m, "num_kv_groups", heads // kv),
            (m, "attn_dim", heads * d), (m, "kv_dim", kv * d)]


@attention_layer("timm-rope", edit=_rope_edits)
def _timm_rope(m: Any) -> Layout | None:
    """timm's AttentionRope: packed qkv or q / k / v projections (grouped-query too), rotary embeddings."""
    if not _is(m, _ROPE):
        return None
    h, kv, d = int(m.num_heads), int(m.num_kv_heads), int(m.head_dim)
    if not (m.attn_dim == h * d and m.kv_dim == kv * d and m.num_kv_groups * kv == h):
        return None
    return _qkv_layout(m, h, kv, d)
