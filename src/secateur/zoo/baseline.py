"""Train a dense baseline from registry names and save it as safetensors + JSON.

This is what ``secateur train`` runs, and what ``secateur prune`` runs first when it is not
given a trained baseline. Default recipes per zoo model reach Han et al.'s baseline accuracy.
"""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy
import torch
from torch import nn

from secateur import __version__
from secateur.distributed import is_writer, writer_only
from secateur.io import rundir
from secateur.io.storage import save_model
from secateur.train import TrainConfig, evaluate, fit
from secateur.zoo.data import Dataset, load_dataset
from secateur.zoo.models import build_model, model_record

# Default training recipes. Chosen on the validation split; see README "Baselines".
RECIPES: dict[str, TrainConfig] = {
    "lenet300": TrainConfig(epochs=20, batch_size=64, lr=0.05, weight_decay=1e-4, augment=1),
    "lenet5": TrainConfig(epochs=15, batch_size=64, lr=0.01, weight_decay=5e-4, augment=1),
    # A small ViT trains with AdamW (decoupled weight decay) at a larger batch: minutes on one CPU core.
    "vit-mnist": TrainConfig(epochs=10, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=0.05),
}
GENERIC_RECIPE = TrainConfig(epochs=10, batch_size=64, lr=0.01, weight_decay=5e-4)


def default_config(model_name: str) -> TrainConfig:
    """The default training recipe for a model name (zoo recipes; a generic one otherwise)."""
    return RECIPES.get(model_name.lower(), GENERIC_RECIPE)


@dataclass
class Baseline:
    """A trained model together with the metadata saved beside its weights."""

    model: nn.Module
    meta: dict


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint, for reproducibility."""
    return {"secateur": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "torchvision": _version_of("torchvision"), "numpy": numpy.__version__}


def _version_of(package: str) -> str:
    try:
        return version(package)
    except Exception:  # a missing optional package is simply "unknown"
        return "unknown"


def weights_record(path: str | Path) -> dict[str, str]:
    """``{"file": name, "sha256": digest}`` of a weights file a baseline started from (in its header)."""
    return {"file": Path(path).name, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def accuracy_metrics(model: nn.Module, data: Dataset, device: str = "cpu") -> dict:
    """``{"val": {"accuracy": a}, "test": {"accuracy": b}}`` as stored in model.json."""
    return {split: {"accuracy": evaluate(model, data, split, device=device)} for split in ("val", "test")}


def train_baseline(model: str, dataset: str | Dataset = "mnist", *, out: str | Path | None = None,
                   config: TrainConfig | None = None, data_dir: str | Path | None = None,
                   progress: bool = False, force: bool = False, weights: str | Path | None = None) -> Baseline:
    """Build ``model`` from the registry, train it on ``dataset``, evaluate, and save to ``out``.

    The model is built for the dataset's input shape and classes. ``weights`` (a local
    safetensors state dict) is loaded into it before training (with ``epochs=0``: used as is);
    the header records its file name and sha256.

    ``out`` (a folder) receives ``model.safetensors`` and ``model.json``. It must be new, empty,
    or (``force=True``) hold a baseline to replace (:func:`secateur.io.rundir.check_out`);
    this is checked before training, and nothing is written until the model is trained.
    """
    config = (config or default_config(model)).validate()
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        writer_only(lambda: rundir.check_out(out_dir, "train", force=force))
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_dir)
    torch.manual_seed(config.seed)
    record = model_record(model, input_shape=data.input_shape, num_classes=data.num_classes)
    net = build_model(record["name"], **record["args"], weights=weights)
    start = time.perf_counter()
    history = fit(net, data, config, progress=progress)
    meta = {
        "model": record, "dataset": {"name": data.name, "val_size": len(data.val)},
        "seed": config.seed, "train": config.to_dict(), "train_seconds": time.perf_counter() - start,
        "history": [vars(log) for log in history.history], "versions": versions(),
        "metrics": accuracy_metrics(net, data, config.device),
    }
    if weights is not None:
        meta["weights"] = weights_record(weights)
    if out_dir is not None and is_writer():  # under torchrun, trained data-parallel; rank 0 saves
        with rundir.claim(out_dir, "train", force=force):
            save_model(net, rundir.model_base(out_dir), meta)
    return Baseline(net, meta)
