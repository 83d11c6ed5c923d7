"""Running pruned models faster: sparse kernels for weight-pruned layers on CPU (:mod:`.sparse`)."""

from __future__ import annotations

from secateur.inference.sparse import DEFAULT_MIN_SPARSITY, SparseConv2d, SparseLinear, sparse_model

__all__ = ["DEFAULT_MIN_SPARSITY", "SparseConv2d", "SparseLinear", "sparse_model"]
