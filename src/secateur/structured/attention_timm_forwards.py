"""Pruned forwards of timm attention layers whose own forward ties the head width to the input width.

ConViT's ``GPSA`` and ``MHSA`` split their projections into heads of ``C // num_heads`` (``C`` the
input's width) and reshape the heads' output back to ``C``. After surgery (heads removed, or the
embedding narrowed) the layers become these subclasses: the same parameters, and the same attention
for any head count, the head width read from the projections. This module imports timm; it is
imported only by the surgery of such a layer (timm is then loaded already).
"""

from __future__ import annotations

import torch
from timm.models.convit import GPSA, MHSA


class PrunedGPSA(GPSA):
    """ConViT's gated positional self-attention with heads removed (or a narrower embedding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        if self.rel_indices is None or self.rel_indices.shape[1] != n:
            self.rel_indices = self.get_rel_indices(n)
        attn = self.get_attention(x)
        v = self.v(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1)))

    def get_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k = self.qk(x).reshape(b, n, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        pos_score = self.pos_proj(self.rel_indices.expand(b, -1, -1, -1)).permute(0, 3, 1, 2)
        patch_score = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        gating = torch.sigmoid(self.gating_param.view(1, -1, 1, 1))
        attn = (1.0 - gating) * patch_score + gating * pos_score.softmax(dim=-1)
        return self.attn_drop(attn / attn.sum(dim=-1).unsqueeze(-1))


class PrunedMHSA(MHSA):
    """ConViT's multi-head self-attention with heads removed (or a narrower embedding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1)))
