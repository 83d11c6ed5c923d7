"""timm MobileViT-v2's ``LinearSelfAttention`` as a registered layer layout (timm is not imported).

The layer works channels-first ([B, C, P, N]): a 1x1 ``qkv_proj`` conv makes one query row and
``embed_dim`` key and value rows, split by ``[1, embed_dim, embed_dim]``; key channel ``i``
(weighted by the query's softmax, summed over patches) scales value channel ``i``, which feeds
column ``i`` of the 1x1 ``out_proj`` conv. So key row ``i``, value row ``i`` and ``out_proj``
column ``i`` are one coupled channel (the query row is kept), independent of the layer's input
and output widths; after surgery ``embed_dim`` is the kept count, which the split reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from secateur.structured.attention import Edit, Layout, OwnLayout, attention_layer
from secateur.structured.tracker import Labels, Tracker


@dataclass(frozen=True)
class LinearAttentionLayout(OwnLayout):
    """``embed_dim`` inner channels between ``qkv_proj`` and ``out_proj`` (``width`` output channels)."""

    inner: int
    width: int

    def label(self, tr: Tracker, path: str, in_lab: Labels | None, ndim: int) -> Labels | None:
        qkv, out = (f"{path}.{name}" if path else name for name in ("qkv_proj", "out_proj"))
        if in_lab is not None and in_lab[0] == 1:
            tr.record(qkv, "in", in_lab[1])
        else:
            tr.lock_labels(in_lab)
        k, v, cols = tr.uf.new(self.inner), tr.uf.new(self.inner), tr.uf.new(self.inner)
        tr.uf.union_pairs(k, v)
        tr.uf.union_pairs(k, cols)
        tr.record(qkv, "out", torch.cat([tr.uf.new(1, locked=True), k, v]))
        tr.record(out, "in", cols)
        tr.record(path, "out", k)  # the layer's embed_dim follows
        produced = tr.produce(out, self.width)
        tr.record(out, "out", produced)
        return (1, produced) if ndim > 1 else None


def _conv1x1(m: Any) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1


def _edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    return [] if out is None else [(m, "embed_dim", len(out))]


@attention_layer("timm-linear-attention", edit=_edits)
def _linear_attention(m: Any) -> Layout | None:
    """timm MobileViT-v2's LinearSelfAttention: qkv_proj rows [1 query, keys, values] -> out_proj columns."""
    if type(m).__name__ != "LinearSelfAttention" or not type(m).__module__.startswith("timm."):
        return None
    qkv, proj, dim = getattr(m, "qkv_proj", None), getattr(m, "out_proj", None), getattr(m, "embed_dim", None)
    if not (isinstance(qkv, nn.Conv2d) and isinstance(proj, nn.Conv2d) and _conv1x1(qkv) and _conv1x1(proj)
            and isinstance(dim, int)):
        return None
    if qkv.out_channels != 1 + 2 * dim or proj.in_channels != dim:
        return None
    return LinearAttentionLayout(dim, proj.out_channels)
