"""Pruned forwards of timm attention layers whose own forward ties the head width to the input width.

ConViT's ``GPSA`` and ``MHSA`` split their projections into heads of ``C // num_heads`` (``C`` the
input's width) and reshape the heads' output back to ``C``; EVA's ``EvaAttention`` reshapes its
heads' output back to ``C``. After surgery (heads removed, or the
embedding narrowed) the layers become these subclasses: the same parameters, and the same attention
for any head count, the head width read from the projections. This module imports timm; it is
imported only by the surgery of such a layer (timm is then loaded already).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.layers.pos_embed_sincos import apply_rot_embed_cat
from timm.models.convit import GPSA, MHSA
from timm.models.eva import EvaAttention


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


class PrunedEvaAttention(EvaAttention):
    """EVA's attention with heads removed (or a narrower embedding): its output width is the heads', not the input's."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self._heads(x)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(n, attn, attn_mask, is_causal=is_causal))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(b, n, -1))
        return self.proj_drop(self.proj(x if gate is None else x * gate))

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, heads, N, head_dim), from the packed qkv (its biases apart) or q / k / v projections."""
        b, n, _ = x.shape
        if self.qkv is None:
            return tuple(p(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
                         for p in (self.q_proj, self.k_proj, self.v_proj))
        bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))  # type: ignore[arg-type]
        if bias is None:
            qkv = self.qkv(x)
        elif self.qkv_bias_separate:
            qkv = self.qkv(x) + bias
        else:
            qkv = F.linear(x, weight=self.qkv.weight, bias=bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v
