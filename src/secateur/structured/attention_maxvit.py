"""torchvision MaxViT's ``RelativePositionalMultiHeadAttention`` as a registered attention layout.

Its heads are one packed ``to_qkv`` Linear (q, k, v at offsets 0, ``H*DH``, ``2*H*DH``) and the
``merge`` Linear's columns, plus one column per head of ``relative_position_bias_table``. Its
forward reshapes the heads' output to ``D``, the input width read from ``x.shape``, which ties
the head count to the embedding; after surgery the layer becomes
:class:`PrunedRelativePositionalMultiHeadAttention` (same parameters, same attention, any head
count and any embedding width), whatever the plan cut (heads, embedding or both).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

from secateur.structured.attention import Edit, HeadLayout, Layout, Slot, _kept_heads, _param, attention_layer


class PrunedRelativePositionalMultiHeadAttention(RelativePositionalMultiHeadAttention):
    """MaxViT's relative positional attention with heads (or embedding channels) removed.

    The original merges the heads back to the input width ``D``; this one merges them to
    ``n_heads * head_dim``, so the two may differ. ``scale_factor`` keeps its original value.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, _ = x.shape
        h, dh = self.n_heads, self.head_dim
        q, k, v = (t.reshape(b, g, p, h, dh).permute(0, 1, 3, 2, 4) for t in torch.chunk(self.to_qkv(x), 3, dim=-1))
        dot = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k * self.scale_factor)
        dot = F.softmax(dot + self.get_relative_positional_bias(), dim=-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", dot, v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, h * dh))


def _edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """Kept heads' bias-table columns and count; the pruned forward wherever anything is cut."""
    found: list[Edit] = []
    if out is not None:
        heads = _kept_heads(out, int(m.head_dim), path)
        table = _param(m.relative_position_bias_table, 1, torch.tensor(heads))
        found += [(m, "relative_position_bias_table", table), (m, "n_heads", len(heads))]
    if out is not None or inp is not None:
        found.append((m, "__class__", PrunedRelativePositionalMultiHeadAttention))
    return found


@attention_layer("torchvision-maxvit", edit=_edits)
def _maxvit(m: Any) -> Layout | None:
    """torchvision MaxViT's RelativePositionalMultiHeadAttention: packed to_qkv / merge, per-head bias table."""
    if type(m) not in (RelativePositionalMultiHeadAttention, PrunedRelativePositionalMultiHeadAttention):
        return None
    h, d = int(m.n_heads), int(m.head_dim)
    inner = h * d
    if m.to_qkv.out_features != 3 * inner or m.merge.in_features != inner:
        return None
    # "" reads the input too: an embedding cut reaches the layer itself, whose forward must then change
    return HeadLayout(h, h, d, Slot("to_qkv", "out", 0), Slot("to_qkv", "out", inner),
                      Slot("to_qkv", "out", 2 * inner), Slot("merge", "in"), ("to_qkv", ""),
                      ("merge", m.merge.out_features), "")
