"""``dense`` export: masks folded into a plain safetensors ``state_dict`` any PyTorch user can load.

The file holds ``model.state_dict()`` of the effective weights (pruned entries exactly zero) under
the model's own keys, no masks and no secateur header, so
``model.load_state_dict(safetensors.torch.load_file(path))`` restores it into a model of the same
(for a structurally pruned model: the smaller) architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
from torch import nn

from secateur.export import ExportFormat, register_format
from secateur.io.storage import atomic_write_bytes, plain_state_dict


def write_dense(model: nn.Module, path: Path, options: Mapping[str, object]) -> Mapping[str, object]:
    """Write the effective weights of ``model`` as a plain safetensors state dict."""
    tensors = plain_state_dict(model)
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={"format": "pt"}))
    return {"tensors": len(tensors)}


DENSE = register_format(ExportFormat("dense", ".safetensors", write_dense,
                                     "masks folded into a plain safetensors state_dict (torch.load-free)"))
