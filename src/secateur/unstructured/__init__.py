"""Unstructured and semi-structured sparsity as masks: criteria, mask bookkeeping, kernel and N:M patterns."""
