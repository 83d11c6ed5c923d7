"""Structured sparsity that cannot be removed physically, returned as masks.

- :func:`kernel_masks`: whole 2-D kernels ``weight[o, i, :, :]`` of conv layers, the lowest
  L1 norms per layer;
- :func:`nm_masks`: N:M semi-structured sparsity (e.g. 2:4): in every run of ``m``
  consecutive input weights of a row, only the ``n`` largest magnitudes survive.

Fixed-amount helpers (the search's ``kernel`` and ``n:m`` granularities are in
:mod:`secateur.unstructured.pruner`). Both return ``{"layer.weight": bool mask}`` (True = keep)
for ``secateur.unstructured.masks.apply_masks``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.unstructured.pruner import kernel_norms, nm_keep, nm_rows

Masks = dict[str, torch.Tensor]


def _skip(name: str, ignore: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in ignore)


def kernel_masks(model: nn.Module, ratio: float, *, ignore: Sequence[str] = ()) -> Masks:
    """Masks removing the ``ratio`` of 2-D kernels with the lowest L1 norm in every Conv2d."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"kernel ratio must be in [0, 1), got {ratio!r}")
    masks: Masks = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or _skip(name, ignore):
            continue
        w = m.weight.detach()
        norms = kernel_norms(w).reshape(-1)
        n_prune = int(norms.numel() * ratio)
        keep = torch.ones_like(norms, dtype=torch.bool)
        keep[torch.argsort(norms, stable=True)[:n_prune]] = False
        masks[f"{name}.weight"] = keep.reshape(w.shape[:2])[:, :, None, None].expand_as(w).clone()
    return masks


def nm_masks(model: nn.Module, n: int = 2, m: int = 4, *, ignore: Sequence[str] = ()) -> Masks:
    """N:M masks for Linear and Conv2d weights whose input size is a multiple of ``m``.

    For convs, groups of ``m`` run along the input channels at each kernel position (the
    layout sparse tensor cores use after an NHWC permute). Layers that do not divide are skipped.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ConfigError(f"n:m sparsity needs integers 0 < n < m, got {n}:{m}")
    masks: Masks = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Conv2d)) or _skip(name, ignore):
            continue
        w = mod.weight.detach()
        if nm_rows(w).shape[-1] % m:
            continue
        masks[f"{name}.weight"] = nm_keep(w, w.abs(), n, m)
    return masks
