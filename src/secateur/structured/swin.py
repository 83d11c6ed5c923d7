"""Swin attention layouts: torchvision V2 (``ShiftedWindowAttentionV2``) and timm's ``WindowAttention``.

V2 keeps V1's packed ``qkv`` / ``proj`` Linear layers and adds two per-head tensors: the
cosine attention's ``logit_scale`` (``[heads, 1, 1]``) and the last Linear layer of ``cpb_mlp``,
the small MLP that computes the relative position bias (one output row per head). A head is
the q / k / v rows of ``qkv``, the columns of ``proj``, its ``logit_scale`` entry and its
``cpb_mlp`` row. torchvision's functional form ties the head size to the embedding size, so a
pruned layer becomes :class:`PrunedShiftedWindowAttentionV2` (same parameters, the same
attention for any head count; the window partition is V1's pruned forward).

timm's ``WindowAttention`` (``timm-swin``) has V1's parts (``qkv`` / ``proj``, a bias table column
per head) and a forward that reads ``num_heads`` and infers the head size, so only its head count
and table follow.

Registered into :data:`~secateur.structured.attention.ATTENTION_LAYERS` (one of its built-ins).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

from secateur.structured.attention import (
    Edit,
    HeadLayout,
    Layout,
    PrunedShiftedWindowAttention,
    Slot,
    _kept_grid,
    _kept_heads,
    _param,
    attention_layer,
)


class PrunedShiftedWindowAttentionV2(PrunedShiftedWindowAttention, ShiftedWindowAttentionV2):
    """torchvision's ``ShiftedWindowAttentionV2`` with heads (or embedding channels) removed:
    cosine attention scaled per head, the key bias left out, V2's continuous position bias."""

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.qkv.bias
        if bias is not None:  # V2 has no key bias (torchvision zeroes its third of the packed bias)
            length = bias.numel() // 3
            bias = torch.cat([bias[:length], torch.zeros_like(bias[length:2 * length]), bias[2 * length:]])
        return F.linear(x, self.qkv.weight, bias)

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        return attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()


def _bias_head(m: Any) -> nn.Linear | None:
    """The last layer of ``cpb_mlp`` when it writes one row per head, else None."""
    mlp = getattr(m, "cpb_mlp", None)
    last = mlp[-1] if isinstance(mlp, nn.Sequential) and len(mlp) else None
    return last if isinstance(last, nn.Linear) and last.out_features == m.num_heads else None


def _swin_v2_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """Kept heads' logit scales and position-bias rows; the pruned forward for any shrink."""
    if out is None:
        return [] if inp is None else [(m, "__class__", PrunedShiftedWindowAttentionV2)]
    d = m.qkv.out_features // (3 * m.num_heads)
    heads = torch.tensor(_kept_grid(out, m.num_heads, d, path)[0])  # cosine attention: any head width, no scale
    last = _bias_head(m)
    assert last is not None  # the layout matched
    return [(m, "logit_scale", _param(m.logit_scale, 0, heads)), (last, "weight", _param(last.weight, 0, heads)),
            (last, "bias", _param(last.bias, 0, heads)), (last, "out_features", len(heads)),
            (m, "num_heads", len(heads)), (m, "__class__", PrunedShiftedWindowAttentionV2)]


@attention_layer("torchvision-swin-v2", edit=_swin_v2_edits)
def _swin_v2(m: Any) -> Layout | None:
    """torchvision Swin V2's ShiftedWindowAttentionV2: qkv / proj Linear, per-head logit scale and cpb_mlp row."""
    if type(m) not in (ShiftedWindowAttentionV2, PrunedShiftedWindowAttentionV2) or _bias_head(m) is None:
        return None
    h = m.num_heads
    d = m.qkv.out_features // (3 * h)
    scale = m._parameters.get("logit_scale")  # not m.logit_scale: fx reads parameters as proxies while tracing
    if not isinstance(scale, torch.Tensor) or scale.shape[0] != h or m.qkv.out_features != 3 * h * d:
        return None
    inner = h * d
    return HeadLayout(h, h, d, Slot("qkv", "out", 0), Slot("qkv", "out", inner), Slot("qkv", "out", 2 * inner),
                      Slot("proj", "in"), ("qkv", ""), ("proj", m.proj.out_features), "", head_dims=True)


def _timm_window_edits(path: str, m: Any, out: list[int] | None, inp: list[int] | None) -> list[Edit]:
    """Kept heads' bias table columns and the head count (timm's forward infers the head size)."""
    if out is None:
        return []
    d = m.qkv.out_features // (3 * m.num_heads)
    heads = torch.tensor(_kept_heads(out, d, path))
    return [(m, "relative_position_bias_table", _param(m.relative_position_bias_table, 1, heads)),
            (m, "num_heads", len(heads))]


@attention_layer("timm-swin", edit=_timm_window_edits)
def _timm_window(m: Any) -> Layout | None:
    """timm Swin's WindowAttention: qkv / proj Linear, per-head bias table column (its forward reads num_heads)."""
    kind = type(m)
    if (kind.__module__, kind.__name__) != ("timm.models.swin_transformer", "WindowAttention"):
        return None
    table = m._parameters.get("relative_position_bias_table")  # not the attribute: a proxy while tracing
    h = int(m.num_heads)
    if not (isinstance(m.qkv, nn.Linear) and isinstance(m.proj, nn.Linear) and isinstance(table, torch.Tensor)
            and table.shape[1] == h and m.qkv.out_features % (3 * h) == 0):
        return None
    d = m.qkv.out_features // (3 * h)
    inner = h * d
    return HeadLayout(h, h, d, Slot("qkv", "out", 0), Slot("qkv", "out", inner), Slot("qkv", "out", 2 * inner),
                      Slot("proj", "in"), ("qkv", ""), ("proj", m.proj.out_features), "")
