"""Shared fixtures. Real data comes through $SECATEUR_DATA; a missing dataset fails, never skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


torch.set_num_threads(1)  # tiny test models run faster (and identically) on one thread


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder that holds ``mnist/`` ($SECATEUR_DATA, else ../shared/datasets beside the repo)."""
    root = Path(os.environ.get("SECATEUR_DATA") or REPO.parent / "shared" / "datasets")
    if not (root / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST not found under {root}: set SECATEUR_DATA to the folder holding mnist/")
    return root


@pytest.fixture(scope="session")
def mnist(data_root: Path):
    """The full MNIST dataset (train/val/test), loaded once per session."""
    from secateur.zoo.data import load_dataset

    return load_dataset("mnist", data_dir=data_root / "mnist", download=False)


@pytest.fixture(scope="session")
def small(mnist):
    """2,000 training, 500 validation and 500 test images: end-to-end pruning runs in seconds."""
    return mnist.subset(train=2000, val=500, test=500)


def _trained(name: str, data, epochs: int) -> torch.nn.Module:
    """A zoo model trained from seed 0 on ``data`` (deterministic on CPU)."""
    from secateur.train import TrainConfig, fit
    from secateur.zoo.models import build_model

    torch.manual_seed(0)
    model = build_model(name)
    fit(model, data, TrainConfig(epochs=epochs, lr=0.05), progress=False)
    return model


@pytest.fixture(scope="session")
def trained_lenet300(small):
    """LeNet-300-100 after 3 epochs on :func:`small` (shared: copy it before changing it)."""
    return _trained("lenet300", small, 3)


@pytest.fixture(scope="session")
def trained_lenet5(small):
    """LeNet-5 after 2 epochs on :func:`small` (shared: copy it before changing it)."""
    return _trained("lenet5", small, 2)
