"""timm's attention layers as registered layouts (:data:`~secateur.structured.attention.ATTENTION_LAYERS`).

- ``timm-vit``: ``timm.layers.Attention`` (ViT, DeiT and the other ``vision_transformer`` models):
  a packed ``qkv`` Linear (q, k, v rows one after the other, ``num_heads`` heads of
  ``head_dim`` each) and ``proj``; its forward reads ``num_heads``, ``head_dim`` and
  ``attn_dim``, which surgery sets to the kept heads, so the module stays timm's own class.

A layer is recognised by its class's name and module, without importing timm (an analysis
of a model without timm never loads it), and only in the forms whose pruned heads stay exact:
no LayerNorm over the heads' outputs (``scale_norm``), no gate. Other forms are traced through
as before (their heads kept).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from secateur.structured.attention import Edit, HeadLayout, Layout, Slot, _kept_heads, attention_layer


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
