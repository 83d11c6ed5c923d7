"""secateur: prune trained PyTorch networks within an accuracy drop bound.

The Python API mirrors the CLI; every name (``"han"``, ``"lenet5"``, ``"mnist"``) resolves
through the same registries::

    import secateur
    data = secateur.load_dataset("mnist")
    model = secateur.build_model("lenet300")
    secateur.fit(model, data, secateur.TrainConfig(epochs=20))
    result = secateur.prune(model, data=data, method="han", max_drop=0.1)
    print(result.compression, result.results["pruned"]["test"]["accuracy"])
"""

from __future__ import annotations

import os

# OpenMP's default spin-waiting makes torch's CPU threads 10-20x slower whenever another
# process shares the cores (measured: LeNet-300 step 95 ms -> 5 ms on a busy 2-core machine).
# Passive waiting costs next to nothing on an idle machine. Only effective if set before torch
# loads, and never overrides a value you set yourself.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from secateur.analysis.metrics import count_macs, count_params, sparsity_report
from secateur.errors import SecateurError
from secateur.fixed_amount import ChannelCut, prune_channels, prune_weights
from secateur.inference import sparse_model
from secateur.io.storage import load_model, save_model
from secateur.search.orchestrator import PruneConfig, PruneResult, prune
from secateur.search.session import PruningSession
from secateur.train import TrainConfig, correctness, evaluate, fit
from secateur.unstructured.masks import apply_masks, make_permanent, masks_of
from secateur.zoo.baseline import default_config, train_baseline
from secateur.zoo.data import DATASETS, Dataset, load_dataset
from secateur.zoo.loaders import Loaders
from secateur.zoo.models import MODELS, build_model

__all__ = [
    "DATASETS",
    "MODELS",
    "ChannelCut",
    "Dataset",
    "Loaders",
    "PruneConfig",
    "PruneResult",
    "PruningSession",
    "SecateurError",
    "TrainConfig",
    "apply_masks",
    "build_model",
    "correctness",
    "count_macs",
    "count_params",
    "default_config",
    "evaluate",
    "fit",
    "load_dataset",
    "load_model",
    "make_permanent",
    "masks_of",
    "prune",
    "prune_channels",
    "prune_weights",
    "save_model",
    "sparse_model",
    "sparsity_report",
    "train_baseline",
]
