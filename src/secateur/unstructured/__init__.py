"""Unstructured and semi-structured sparsity as masks: methods, mask bookkeeping, pruners, kernel and N:M patterns."""

from secateur.unstructured.patterns import kernel_masks, nm_masks

__all__ = ["kernel_masks", "nm_masks"]
