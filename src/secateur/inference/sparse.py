"""Sparse CPU inference for weight-pruned models: Linear (and, on request, Conv2d) on sparse kernels.

:func:`sparse_model` returns a copy of a (masked or already folded) model in which every
``nn.Linear`` whose weight is at least ``min_sparsity`` zeros computes ``W @ x`` with torch's
sparse CSR (or BSR) matrix product instead of a dense one; layers below the threshold stay dense
and the caller's model is never touched. Outputs equal the dense model's to float32 rounding
(summation order differs; the tests hold them to 1e-5).

Whether it pays depends on the layer's size, the batch and the density: a sparse kernel skips
the zeros but indexes every nonzero, so it wins only well past 90% zeros on large layers, and a
small layer at batch 1 is often faster dense (``bench/sparse_inference.py`` measures the
crossover; the README has the table). Convolutions go through ``unfold`` (im2col) and a sparse
product only with ``convs=True``, because copying the patches costs more than the skipped
multiplies save on the convolutions we measured.

``layout="bsr"`` stores ``blocksize`` x ``blocksize`` blocks (CSR where the block does not divide
the weight): fast only when the zeros form whole blocks (block-structured pruning), slow for
scattered zeros. ``layout="auto"`` picks BSR for a
layer whose nonzero blocks hold at most 25% padding zeros, and CSR otherwise.

The sparse matrices are kept as their index and value tensors (buffers, so ``.to()``,
``state_dict`` and ``copy.deepcopy`` work) and assembled, without a copy, on each call.
"""

from __future__ import annotations

import copy
import warnings
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from secateur.errors import ConfigError
from secateur.unstructured.masks import make_permanent

LAYOUTS = ("csr", "bsr", "auto")
DEFAULT_MIN_SPARSITY = 0.9
"""Zeros a layer needs before it goes sparse (below it, dense won every size we measured)."""
BSR_MAX_PADDING = 0.25


class SparseMatrix(nn.Module):
    """A 2-D sparse weight stored as its CSR/BSR component tensors (buffers); :meth:`matrix` assembles it."""

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor

    def __init__(self, dense: torch.Tensor, layout: str, blocksize: int) -> None:
        super().__init__()
        self.layout = layout
        self.shape = tuple(dense.shape)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we measured
            warnings.simplefilter("ignore")
            sparse = dense.to_sparse_csr() if layout == "csr" else dense.to_sparse_bsr((blocksize, blocksize))
        self.register_buffer("indptr", sparse.crow_indices())
        self.register_buffer("indices", sparse.col_indices())
        self.register_buffer("values", sparse.values())

    def matrix(self) -> torch.Tensor:
        """The sparse tensor over the current buffers (no copy)."""
        build = torch.sparse_csr_tensor if self.layout == "csr" else torch.sparse_bsr_tensor
        return build(self.indptr, self.indices, self.values, self.shape, check_invariants=False)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for ``x`` of shape (N, in_features): ``(W @ x.T).T``, a matrix-vector product for N = 1.

        (For one row, ``W @ x[0]`` is several times faster than the matrix product on a (K, 1) view.)
        """
        if x.shape[0] == 1:
            return (self.matrix() @ x[0]).unsqueeze(0)
        return torch.sparse.mm(self.matrix(), x.t()).t()

    def extra_repr(self) -> str:
        return f"{self.layout}, shape={self.shape}, nonzero={self.values.count_nonzero().item()}"


class SparseLinear(nn.Module):
    """``nn.Linear`` for inference with a sparse weight (any leading dimensions, like ``nn.Linear``)."""

    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, layout: str, blocksize: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = SparseMatrix(linear.weight.detach(), layout, blocksize)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.weight.matmul(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (groups=1, zero padding) for inference as im2col (``unfold``) and a sparse product."""

    bias: torch.Tensor | None

    def __init__(self, conv: nn.Conv2d, layout: str, blocksize: int) -> None:
        super().__init__()
        padding = conv.padding
        if isinstance(padding, str):  # "same" / "valid": not what unfold takes (refused by _convertible)
            raise ConfigError(f"SparseConv2d needs numeric padding, got {padding!r}")
        self.out_channels, self.kernel_size = conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, padding, conv.dilation
        self.weight = SparseMatrix(conv.weight.detach().reshape(conv.out_channels, -1), layout, blocksize)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C*k*k, L)
        flat = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N*L, C*k*k)
        y = self.weight.matmul(flat)
        if self.bias is not None:
            y = y + self.bias
        oh, ow = (_out_size(size, i, self) for i, size in enumerate((h, w)))
        return y.reshape(n, oh, ow, self.out_channels).permute(0, 3, 1, 2)


def _out_size(size: int, i: int, conv: SparseConv2d) -> int:
    k, s, p, d = conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def sparse_model(model: nn.Module, *, layout: str = "csr", min_sparsity: float = DEFAULT_MIN_SPARSITY,
                 convs: bool = False, blocksize: int = 16) -> nn.Module:
    """A copy of ``model`` (masks folded, eval mode) whose sparse-enough layers run on sparse kernels.

    ``layout``: ``csr``, ``bsr`` or ``auto`` (see the module doc); ``min_sparsity``: the fraction
    of zeros from which a layer goes sparse; ``convs``: also convert ``Conv2d`` (groups=1, zero
    padding). Inference only: the sparse layers hold buffers, not parameters.
    """
    _check(layout, min_sparsity, blocksize)
    copied = make_permanent(copy.deepcopy(model)).eval()
    kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d) if convs else (nn.Linear,)
    for name, module in list(copied.named_modules()):
        if not (isinstance(module, kinds) and _convertible(module)):
            continue
        layer = cast(nn.Linear | nn.Conv2d, module)
        weight = layer.weight.detach()
        if sparsity(weight) < min_sparsity:
            continue
        chosen = choose_layout(weight.reshape(weight.shape[0], -1), layout, blocksize)
        sparse = (SparseLinear(layer, chosen, blocksize) if isinstance(layer, nn.Linear)
                  else SparseConv2d(layer, chosen, blocksize))
        if not name:  # the model is itself one layer
            return sparse
        _replace(copied, name, sparse)
    return copied


def sparsity(weight: torch.Tensor) -> float:
    """Fraction of exact zeros in ``weight``."""
    return 1.0 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)


def choose_layout(weight: torch.Tensor, layout: str, blocksize: int) -> str:
    """``layout``, or for ``auto``: BSR if its nonzero blocks are at most 25% padding, else CSR.

    A weight whose shape ``blocksize`` does not divide is always CSR.
    """
    rows, cols = weight.shape
    if layout == "csr" or rows % blocksize or cols % blocksize:
        return "csr"
    if layout == "bsr":
        return "bsr"
    blocks = weight.reshape(rows // blocksize, blocksize, cols // blocksize, blocksize).ne(0).any(dim=(1, 3))
    stored = int(blocks.sum()) * blocksize * blocksize
    return "bsr" if stored <= (1 + BSR_MAX_PADDING) * max(int(torch.count_nonzero(weight)), 1) else "csr"


def _convertible(module: nn.Module) -> bool:
    """Conv2d with one group and zero padding (what ``unfold`` computes); every Linear."""
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return True


def _check(layout: str, min_sparsity: float, blocksize: int) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown sparse layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, int | float) or not 0 <= min_sparsity <= 1:
        raise ConfigError(f"min_sparsity must be a fraction of zeros in [0, 1], got {min_sparsity!r}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ConfigError(f"blocksize must be a positive integer, got {blocksize!r}")


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)
