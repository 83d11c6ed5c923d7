"""Weight sharing (Deep Compression, Han et al. 2016): a per-layer codebook of ``2**b`` centroids.

Each weight tensor's kept entries are clustered by 1-D k-means into ``2**b`` centroids
(``b = 2..8``), from a *linear* initialisation (evenly spaced between the smallest and largest
kept weight, the start the paper found best: it keeps the few large weights, which matter most).
Every kept weight then takes its centroid's value; pruned entries stay exactly 0 (the masks are
fixed). The centroids are fine-tuned on the training split: a centroid's gradient is the sum of
the gradients of the weights that share it, as in the paper. The shared model is kept only if
the drop bound still holds on the validation split, judged by the search's own rule
(:mod:`secateur.search.acceptance`: paired margin, same confidence).

The shared model is an ordinary (masked) model whose weights have few distinct values, so the
compact format (:mod:`secateur.export.compact`) stores each as a codebook plus codes, exactly.
``bits`` is one width for every weight (``5``) or one per layer kind and/or tensor name
(``conv:8,fc:5``, ``fc3.weight:6``; on AlexNet Han used 8 bits for conv and 5 for fc).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from secateur.errors import ConfigError
from secateur.export import ExportOption
from secateur.search.acceptance import Outcome, margin, within
from secateur.train import correctness, default_step
from secateur.unstructured.masks import PRUNABLE_TYPES, mask_of
from secateur.zoo.data import Dataset, batches

BITS = range(2, 9)
KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "fc": (nn.Linear,), "conv": tuple(t for t in PRUNABLE_TYPES if t is not nn.Linear)}
KMEANS_ITERATIONS = 50


def parse_bits(value: object) -> dict[str, int] | None:
    """``5`` -> every weight 5 bits; ``conv:8,fc:5`` / ``fc3.weight:6`` -> by kind / tensor name."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return {"*": _width(value)}
    if isinstance(value, Mapping):
        return {str(k): _width(v) for k, v in value.items()}
    out: dict[str, int] = {}
    for part in str(value).split(","):
        key, _, width = part.strip().rpartition(":")
        out[key or "*"] = _width(width)
    return out


def _width(value: object) -> int:
    try:
        bits = int(str(value))
    except ValueError:
        raise ValueError(f"a width is a whole number of bits, got {value!r}") from None
    if bits not in BITS:
        raise ValueError(f"widths go from {BITS.start} to {BITS.stop - 1} bits, got {bits}")
    return bits


def weight_bits(model: nn.Module, spec: Mapping[str, int]) -> dict[str, int]:
    """The width of each shared tensor (``<layer>.weight`` of every fc / conv layer the spec covers)."""
    known = {"*", *KINDS}
    out: dict[str, int] = {}
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        kind = next(k for k, types in KINDS.items() if isinstance(module, types))
        key = f"{name}.weight"
        known.add(key)
        width = spec.get(key, spec.get(kind, spec.get("*")))
        if width is not None:
            out[key] = width
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"bits names {', '.join(unknown)}, which is neither a layer kind (fc, conv) nor a "
                          "weight of this model; e.g. bits=conv:8,fc:5")
    return out


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = KMEANS_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids, codes): Lloyd's k-means of 1-D ``values`` from the linear initialisation."""
    values = values.detach().to(torch.float64)
    centroids = torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)
    codes = torch.zeros(values.numel(), dtype=torch.int64)
    for _ in range(iterations):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        codes = torch.bucketize(values, bounds)
        counts = torch.bincount(codes, minlength=k)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, values)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        moved, _ = torch.sort(moved)
        if torch.equal(moved, centroids):
            break
        centroids = moved
    codes = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
    return centroids.to(torch.float32), codes


@dataclass
class Shared:
    """One shared tensor: its module and attribute, kept entries, codes and trainable centroids."""

    module: nn.Module
    attr: str
    keep: torch.Tensor  # bool, flat
    codes: torch.Tensor  # int64, one per kept entry
    centroids: nn.Parameter

    def stored(self) -> torch.Tensor:
        """The tensor that holds the weights (the mask's stored original, or the parameter)."""
        if parametrize.is_parametrized(self.module, self.attr):
            return self.module.parametrizations[self.attr].original  # type: ignore[index,union-attr]
        return getattr(self.module, self.attr)

    @torch.no_grad()
    def write(self) -> None:
        """Every kept weight := its centroid; pruned entries stay 0."""
        target = self.stored()
        flat = torch.zeros(target.numel(), dtype=target.dtype, device=target.device)
        flat[self.keep] = self.centroids.detach().to(target.dtype)[self.codes]
        target.copy_(flat.reshape(target.shape))

    def centroid_grad(self) -> torch.Tensor | None:
        """Sum of the gradients of the weights sharing each centroid."""
        grad = self.stored().grad
        if grad is None:
            return None
        kept = grad.reshape(-1)[self.keep].to(torch.float32)
        return torch.zeros_like(self.centroids).index_add_(0, self.codes, kept)


def cluster(model: nn.Module, widths: Mapping[str, int]) -> list[Shared]:
    """Cluster each named weight of ``model`` in place (k-means, linear init); returns the shares."""
    shares = []
    for name, bits in widths.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        weight = getattr(module, attr).detach()
        mask = mask_of(module, attr)
        keep = (torch.ones_like(weight, dtype=torch.bool) if mask is None else mask).reshape(-1).cpu()
        kept = weight.reshape(-1).cpu()[keep]
        if kept.numel() == 0:
            continue
        centroids, codes = kmeans_1d(kept, min(2 ** bits, kept.numel()))
        share = Shared(module, attr, keep, codes, nn.Parameter(centroids))
        share.write()
        shares.append(share)
    return shares


def fine_tune(model: nn.Module, shares: list[Shared], data: Dataset, *, epochs: int, lr: float,
              seed: int = 0, batch_size: int = 128) -> None:
    """Train the centroids only (masks and codes fixed) for ``epochs`` passes over ``data.train``."""
    if epochs <= 0 or not shares:
        return
    optimizer = torch.optim.Adam([s.centroids for s in shares], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.train()
    for _ in range(epochs):
        for x, y in batches(data.train, batch_size, mean=data.mean, std=data.std, shuffle=True,
                            generator=generator, device=device):
            model.zero_grad(set_to_none=True)
            default_step(model, x, y).backward()
            for share in shares:
                share.centroids.grad = share.centroid_grad()
            optimizer.step()
            for share in shares:
                share.write()
    model.zero_grad(set_to_none=True)
    model.eval()


def judge(model: nn.Module, data: Dataset, baseline: Outcome, max_drop: float,
          confidence: float) -> dict[str, float | bool]:
    """The search's acceptance rule on the validation split: drop, margin, and whether within."""
    candidate = Outcome.of(correctness(model, data, "val"))
    drop = 100 * (baseline.accuracy - candidate.accuracy)
    extra = margin(baseline, candidate, confidence)
    return {"val_accuracy": candidate.accuracy, "drop": drop, "margin": extra,
            "accepted": within(drop, max_drop, extra)}


def share_weights(model: nn.Module, bits: object, *, data: Dataset | None = None, epochs: int = 1,
                  lr: float = 1e-4, max_drop: float | None = None, baseline: nn.Module | None = None,
                  confidence: float = 0.5, seed: int = 0) -> tuple[nn.Module, dict]:
    """A copy of ``model`` with shared weights, and facts about it; see the module doc.

    With ``data`` the centroids are fine-tuned for ``epochs``; with ``max_drop`` and ``baseline``
    too, the copy is judged against the baseline on ``data.val`` and refused (one-line
    ConfigError) if its drop breaks the bound."""
    spec = parse_bits(bits)
    if spec is None:
        raise ConfigError("bits is required for weight sharing, e.g. bits=5 or bits=conv:8,fc:5")
    shared = copy.deepcopy(model)
    widths = weight_bits(shared, spec)
    shares = cluster(shared, widths)
    facts: dict = {"bits": widths, "epochs": 0}
    if data is not None:
        fine_tune(shared, shares, data, epochs=epochs, lr=lr, seed=seed)
        facts["epochs"] = epochs
        if max_drop is not None and baseline is not None:
            facts.update(judge(shared, data, Outcome.of(correctness(baseline, data, "val")), max_drop, confidence))
            facts["max_drop"] = max_drop
            if not facts["accepted"]:
                raise ConfigError(f"weight sharing at bits {_shown(widths)} breaks the drop bound: val drop "
                                  f"{facts['drop']:.2f} + margin {facts['margin']:.2f} > {max_drop} points; "
                                  "give more bits")
    return shared.eval(), facts


def _shown(widths: Mapping[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in widths.items())


# --------------------------------------------------------------------------------------------- export options


@dataclass(frozen=True)
class RunJudge:
    """What a prune run folder says about judging a shared model: data, baseline and bound."""

    data: Dataset
    baseline: nn.Module
    max_drop: float
    confidence: float


def run_judge(folder: str | Path) -> RunJudge:
    """The dataset, baseline model, max_drop and confidence recorded in a prune run folder."""
    from secateur.io import rundir
    from secateur.io.storage import load_model
    from secateur.zoo.data import load_dataset

    out = Path(folder)
    config = rundir.read_config(out)
    dataset = config.get("dataset") or "mnist"
    name = dataset if isinstance(dataset, str) else str(dataset.get("name"))
    prune = config.get("prune") or {}
    baseline, _ = load_model(rundir.checkpoint_in(rundir.baseline_dir(out)))
    return RunJudge(load_dataset(name), baseline, float(prune.get("max_drop", 0.1)),
                    float(prune.get("confidence", 0.5)))


def share_for_export(model: nn.Module, options: Mapping[str, object]) -> tuple[nn.Module, dict]:
    """The compact writer's weight-sharing step: ``model`` itself when no ``bits`` are given."""
    if options.get("bits") is None:
        return model, {}
    data, baseline, max_drop = options.get("data"), options.get("baseline"), options.get("max_drop")
    confidence = 0.5
    if options.get("run") is not None:
        judged = run_judge(str(options["run"]))
        data, baseline, max_drop, confidence = judged.data, judged.baseline, judged.max_drop, judged.confidence
    return share_weights(model, options["bits"], data=data if isinstance(data, Dataset) else None,
                         epochs=int(str(options["epochs"])), lr=float(str(options["lr"])),
                         max_drop=None if max_drop is None else float(str(max_drop)),
                         baseline=baseline if isinstance(baseline, nn.Module) else None, confidence=confidence)


def _whole(value: object) -> object:
    return int(str(value))


def _real(value: object) -> object:
    return float(str(value))


def _dataset(value: object) -> object:
    if not isinstance(value, Dataset):
        raise TypeError("data must be a secateur Dataset (the API only; the CLI uses run=FOLDER)")
    return value


def _module(value: object) -> object:
    if not isinstance(value, nn.Module):
        raise TypeError("baseline must be an nn.Module (the API only; the CLI uses run=FOLDER)")
    return value


SHARING_OPTIONS = {
    "bits": ExportOption(parse_bits, "share weights: codebook width per weight, e.g. 5 or conv:8,fc:5 (2..8)"),
    "run": ExportOption(str, "a prune run folder: fine-tune the centroids on its data, accept only within its "
                             "drop bound"),
    "epochs": ExportOption(_whole, "epochs of centroid fine-tuning (with data or run)", 1),
    "lr": ExportOption(_real, "Adam learning rate of the centroids", 1e-4),
    "data": ExportOption(_dataset, "API: a Dataset to fine-tune on and judge with"),
    "baseline": ExportOption(_module, "API: the baseline the drop is measured against"),
    "max_drop": ExportOption(_real, "API: the drop bound in points"),
}
