"""Name-based workflows behind the CLI: baseline (trained or loaded) -> prune -> report.

``secateur prune`` and ``secateur sweep`` call these; Python users can too, or call
:func:`secateur.prune` directly with their own model and callables.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from secateur.analysis.sensitivity import sensitivity
from secateur.analysis.sweep import DEFAULT_STRENGTHS, sweep
from secateur.errors import CheckpointError, ConfigError
from secateur.io import rundir
from secateur.io.storage import load_model
from secateur.report import sensitivity_figure, sweep_report
from secateur.search.orchestrator import PruneConfig, PruneResult, default_callables, prune, retrain_config
from secateur.train import TrainConfig, evaluate
from secateur.zoo.baseline import default_config, train_baseline
from secateur.zoo.data import Dataset, load_dataset


@dataclass
class LoadedBaseline:
    """A dense baseline with the metadata needed to retrain and rebuild it."""

    model: nn.Module
    meta: dict
    train_config: TrainConfig


def load_baseline(path: str | Path) -> LoadedBaseline:
    """A baseline from a run folder (``DIR/model.*``) or a checkpoint path."""
    stem = rundir.checkpoint_base(Path(path))
    if not stem.with_suffix(".safetensors").exists():
        raise CheckpointError(f"no checkpoint at {stem}.safetensors; train one with 'secateur train'")
    model, meta = load_model(stem)
    fields = meta.get("train") or {}
    config = TrainConfig.from_dict(fields) if fields else default_config(meta["model"]["name"])
    return LoadedBaseline(model, meta, config)


def obtain_baseline(model: str | None, data: Dataset, out: Path, *, from_dir: str | Path | None,
                    train_config: TrainConfig | None, progress: bool) -> LoadedBaseline:
    """``--from`` if given; else a baseline trained earlier into ``out/baseline``; else train one."""
    if from_dir is not None:
        return load_baseline(from_dir)
    if rundir.has_checkpoint(rundir.baseline_dir(out)):
        return load_baseline(rundir.baseline_dir(out))
    if model is None:
        raise ConfigError("give --model to train a baseline, or --from a trained baseline folder")
    trained = train_baseline(model, data, out=rundir.baseline_dir(out), config=train_config, progress=progress)
    return LoadedBaseline(trained.model, trained.meta, TrainConfig.from_dict(trained.meta["train"]))


def _check_fresh(out: Path, resume: bool) -> None:
    if not resume and (out / rundir.CONFIG).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if not resume and rundir.has_checkpoint(rundir.baseline_dir(out)):
        raise ConfigError(f"{out}/{rundir.BASELINE} already holds a baseline; "
                          "pass --resume to prune it or choose another --out")


def run_dataset(out: Path, from_dir: str | Path | None, dataset: str | None) -> str:
    """The dataset to use: as given, else the one the run folder or baseline was made with."""
    if dataset is not None:
        return dataset
    if (out / rundir.CONFIG).exists():
        return _dataset_name(rundir.read_config(out).get("dataset")) or "mnist"
    for folder in (from_dir, rundir.baseline_dir(out)):
        if folder is not None and (Path(folder) / rundir.MODEL_META).exists():
            return _dataset_name(rundir.read_model_meta(Path(folder)).get("dataset")) or "mnist"
    return "mnist"


def _dataset_name(entry: object) -> str | None:
    """A dataset name from metadata that holds either the name or ``{"name": ...}``."""
    return entry.get("name") if isinstance(entry, dict) else entry if isinstance(entry, str) else None


def prune_run(*, out: str | Path, model: str | None = None, dataset: str | None = None,
              from_dir: str | Path | None = None, config: PruneConfig | None = None,
              train_config: TrainConfig | None = None, data_dir: str | Path | None = None,
              resume: bool = False, progress: bool = True, device: str | None = None) -> PruneResult:
    """The whole ``secateur prune`` run: data, baseline, search, run folder and report.

    ``device`` overrides where retraining runs (default: where the baseline was trained).
    """
    out = Path(out)
    _check_fresh(out, resume)
    data = load_dataset(run_dataset(out, from_dir, dataset), data_dir)
    baseline = obtain_baseline(model, data, out, from_dir=from_dir, train_config=train_config, progress=progress)
    _check_dataset(baseline.meta, data)
    meta = {"model": baseline.meta["model"], "dataset": data.name}
    if device is not None:
        baseline.train_config = baseline.train_config.replace(device=device).validate()
    resuming = resume and (out / rundir.STATE).exists()
    return prune(copy.deepcopy(baseline.model), data=data, config=config,
                 train_config=baseline.train_config, out=out, resume=resuming, progress=progress, meta=meta)


def _check_dataset(meta: dict, data: Dataset) -> None:
    trained_on = _dataset_name(meta.get("dataset"))
    if trained_on and trained_on != data.name:
        raise ConfigError(f"the baseline was trained on {trained_on!r}, not {data.name!r}; pass --dataset {trained_on}")


def sensitivity_run(*, from_dir: str | Path, out: str | Path, method: str = "han",
                    data_dir: str | Path | None = None, tolerance: float = 1.0, progress: bool = True) -> dict:
    """``secateur sensitivity``: curves per layer of a trained baseline, saved with a plot."""
    baseline = load_baseline(from_dir)
    data = load_dataset(baseline.meta["dataset"]["name"], data_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    analysis = sensitivity(baseline.model, lambda m: evaluate(m, data, "val"), method=method,
                           tolerance=tolerance, progress=progress)
    rundir.write_sensitivity(out, analysis)
    sensitivity_figure(analysis).savefig(out / rundir.SENSITIVITY_PNG, dpi=120)
    return analysis


def sweep_run(*, out: str | Path, methods: list[str], model: str | None = None,
              from_dir: str | Path | None = None, dataset: str | None = None,
              strengths: Sequence[float] = DEFAULT_STRENGTHS,
              retrain_epochs: int = 2, data_dir: str | Path | None = None, progress: bool = True) -> dict:
    """``secateur sweep``: every method's trade-off curve, saved and plotted together."""
    out = Path(out)
    data = load_dataset(run_dataset(out, from_dir, dataset), data_dir)
    baseline = obtain_baseline(model, data, out, from_dir=from_dir, train_config=None, progress=progress)
    retrain = retrain_config(PruneConfig(retrain_epochs=retrain_epochs), baseline.train_config)
    make_train, _, _ = default_callables(data, retrain)
    result = sweep(baseline.model, methods, make_train=make_train, evaluate=lambda m: evaluate(m, data, "val"),
                   strengths=strengths, progress=progress)
    result.update(model=baseline.meta["model"], dataset=data.name)
    return sweep_report(rundir.write_sweep(out, result), out)
