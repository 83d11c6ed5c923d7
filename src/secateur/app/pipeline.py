"""Name-based workflows behind the CLI: baseline (trained or loaded) -> prune -> report.

``secateur prune`` and ``secateur sweep`` call these; Python users can too, or call
:func:`secateur.prune` directly with their own model and callables.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from secateur.analysis.sensitivity import sensitivity
from secateur.analysis.sweep import DEFAULT_STRENGTHS, check_sweep, sweep, sweep_result
from secateur.app.sweep_workers import SWEEP_SCHEDULE, SweepTask, sweep_curve
from secateur.distributed import agree, is_writer, parallel_map, session, writer_context, writer_only
from secateur.errors import ConfigError
from secateur.io import rundir
from secateur.io.storage import atomic_write_bytes, load_model, read_json
from secateur.report import sensitivity_figure, sweep_report
from secateur.report.figures import png_bytes
from secateur.search.orchestrator import (
    PruneConfig,
    PruneResult,
    default_callables,
    prune,
    resumed_config,
    retrain_config,
)
from secateur.train import TrainConfig, evaluate
from secateur.zoo.baseline import default_config, train_baseline, weights_record
from secateur.zoo.data import Dataset, load_dataset

# training flags a resumed run checks against its baseline's recipe (--device may move a run, --seed is the search's)
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "lr_schedule", "augment")


@dataclass
class LoadedBaseline:
    """A dense baseline with the metadata needed to retrain and rebuild it."""

    model: nn.Module
    meta: dict
    train_config: TrainConfig


def load_baseline(path: str | Path) -> LoadedBaseline:
    """A baseline from a run folder (``DIR/model.*``) or a checkpoint path."""
    model, meta = load_model(rundir.checkpoint_in(path))
    fields = meta.get("train") or {}
    config = TrainConfig.from_dict(fields) if fields else default_config(meta["model"]["name"])
    return LoadedBaseline(model, meta, config)


def obtain_baseline(model: str | None, data: Dataset, out: Path, *, from_dir: str | Path | None,
                    train_config: TrainConfig | None, progress: bool,
                    weights: str | Path | None = None) -> LoadedBaseline:
    """``--from`` if given; else a baseline trained earlier into ``out/baseline``; else train one
    (from ``weights``, a local safetensors state dict, when given)."""
    check_weights(weights, from_dir)
    if from_dir is not None:
        return load_baseline(from_dir)
    if rundir.has_checkpoint(rundir.baseline_dir(out)):
        baseline = load_baseline(rundir.baseline_dir(out))
        _check_started_from(weights, baseline.meta, out)
        return baseline
    if model is None:
        raise ConfigError("give --model to train a baseline, or --from a trained baseline folder")
    trained = train_baseline(model, data, out=rundir.baseline_dir(out), config=train_config, progress=progress,
                             weights=weights)
    return LoadedBaseline(trained.model, trained.meta, TrainConfig.from_dict(trained.meta["train"]))


def check_weights(weights: str | Path | None, from_dir: str | Path | None) -> None:
    """``--weights`` initialises a model built from a name; a ``--from`` baseline has its own."""
    if weights is not None and from_dir is not None:
        raise ConfigError("--weights loads into a model built from --model; --from brings its own weights, "
                          "drop one of them")
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"--weights {weights}: no such file; give a local .safetensors state dict")


def _check_started_from(weights: str | Path | None, meta: Mapping, out: Path) -> None:
    """``--weights`` given again must be the file the baseline in ``out`` was trained from."""
    if weights is None:
        return
    recorded = meta.get("weights")
    if not isinstance(recorded, Mapping) or recorded.get("sha256") != weights_record(weights)["sha256"]:
        raise ConfigError(f"--weights {weights} is not the file the baseline in {out} was trained from; drop it "
                          "to use that baseline, or start a new run in another --out")


def run_dataset(out: Path, from_dir: str | Path | None, dataset: str | None) -> str:
    """The dataset to use: as given, else the one the run folder or baseline was made with."""
    if dataset is not None:
        return dataset
    if (out / rundir.CONFIG).exists():
        return _record_name(rundir.read_config(out).get("dataset")) or "mnist"
    for folder in (from_dir, rundir.baseline_dir(out)):
        header = rundir.checkpoint_base(Path(folder)).with_suffix(".json") if folder is not None else None
        if header is not None and header.is_file():
            return _record_name(read_json(header).get("dataset")) or "mnist"
    return "mnist"


def _record_name(entry: object) -> str | None:
    """A dataset or model name from metadata that holds either the name or ``{"name": ...}``."""
    return entry.get("name") if isinstance(entry, dict) else entry if isinstance(entry, str) else None


def prune_run(*, out: str | Path, model: str | None = None, dataset: str | None = None,
              from_dir: str | Path | None = None, config: PruneConfig | None = None,
              train_config: TrainConfig | None = None, data_dir: str | Path | None = None,
              resume: bool = False, force: bool = False, given: Mapping[str, object] | None = None,
              progress: bool = True, device: str | None = None, autocast: str | None = None,
              weights: str | Path | None = None, distributed: bool | None = None) -> PruneResult:
    """The whole ``secateur prune`` run: data, baseline, search, run folder and report.

    ``out`` follows :func:`secateur.io.rundir.check_out`. With ``resume``, ``given`` (the options
    given on the command line, by field name), ``model``, ``dataset`` and ``from_dir`` must agree
    with what the run started with. ``device`` overrides where retraining runs (default: where
    the baseline was trained) and ``autocast`` its precision (default: the baseline's); both may
    change on a resume. ``weights`` (a local safetensors state dict) initialises the baseline
    built from ``model`` before it is trained. ``distributed`` as for :func:`secateur.prune` (under
    ``torchrun``, a baseline to train is trained data-parallel too, and rank 0 alone writes).
    """
    out = Path(out)
    check_weights(weights, from_dir)
    with session(distributed):
        writer_only(lambda: rundir.check_out(out, "prune", resume=resume, force=force, source=from_dir))
        if resume:
            check_resumed(out, given or {}, model=model, dataset=dataset)
        data = _load_data(run_dataset(out, from_dir, dataset), data_dir)
        progress = progress and is_writer()
        with writer_context(lambda: rundir.claim(out, "prune", resume=resume, force=force, source=from_dir)) as taken:
            baseline = _run_baseline(_shared_claim(taken, out), model, data, from_dir, train_config, progress, weights)
            meta = {"model": baseline.meta["model"], "dataset": data.name}
            overrides = {key: value for key, value in (("device", device), ("autocast", autocast)) if value is not None}
            if overrides:
                baseline.train_config = baseline.train_config.replace(**overrides).validate()
            return prune(copy.deepcopy(baseline.model), data=data, config=config, train_config=baseline.train_config,
                         out=out, resume=resume, force=force, progress=progress, meta=meta, distributed=distributed)


def _load_data(name: str, data_dir: str | Path | None) -> Dataset:
    """The dataset, loaded by rank 0 first under torchrun (a download then happens once)."""
    data = writer_only(lambda: load_dataset(name, data_dir))
    return data if data is not None else load_dataset(name, data_dir)


class _ReadOnlyClaim(rundir.Claim):
    """Rank 0's claim as the other ranks see it: what it records, without writing the marker."""

    def note(self, **fields: object) -> None:
        self.record.update(fields)


def _shared_claim(taken: rundir.Claim | None, out: Path) -> rundir.Claim:
    """Rank 0's claim of ``out`` (whether it resumes, what its marker records) on every rank."""
    facts: dict[str, Any] = agree({"resumed": taken.resumed, "record": taken.record} if taken is not None else {})
    if taken is not None:
        return taken
    return _ReadOnlyClaim(out, "prune", dict(facts["record"]), bool(facts["resumed"]), [], False)


def _run_baseline(claimed: rundir.Claim, model: str | None, data: Dataset, from_dir: str | Path | None,
                  train_config: TrainConfig | None, progress: bool,
                  weights: str | Path | None = None) -> LoadedBaseline:
    """The baseline of a prune run, with the recipe its retraining follows (kept in the run's marker,
    so a resumed run retrains as it started, with or without ``--from``)."""
    baseline = obtain_baseline(model, data, claimed.out, from_dir=from_dir, train_config=train_config,
                               progress=progress, weights=weights)
    _check_dataset(baseline.meta, data)
    if claimed.resumed and from_dir is not None:
        _check_same_baseline(claimed.out, from_dir, baseline.model)
    recipe = claimed.record.get("baseline_train")
    if claimed.resumed and isinstance(recipe, dict):
        baseline.train_config = TrainConfig.from_dict(recipe)
    else:
        claimed.note(baseline_train=baseline.train_config.to_dict())
    return baseline


def finished_run(out: str | Path, given: Mapping[str, object], *, model: str | None, dataset: str | None,
                 from_dir: str | Path | None) -> dict | None:
    """The results of the finished run in ``out``, which a resume leaves as it is (given settings
    checked as for any resume); None if ``out`` holds no finished prune run."""
    out = Path(out)
    try:
        found = rundir.find_output(out) if out.is_dir() else None
    except OSError:
        return None  # check_out says what is wrong with such a path
    if found is None or found.kind != "prune" or not found.finished:
        return None
    check_resumed(out, given, model=model, dataset=dataset)
    if from_dir is not None:
        _check_same_baseline(out, from_dir, load_baseline(from_dir).model)
    return rundir.read_results(out)


def check_resumed(out: Path, given: Mapping[str, object], *, model: str | None, dataset: str | None) -> None:
    """Refuse a resume given settings that differ from those the run in ``out`` started with."""
    if (out / rundir.CONFIG).exists():
        saved = rundir.read_config(out)
        for flag, value, was in (("model", model, _record_name(saved.get("model"))),
                                 ("dataset", dataset, _record_name(saved.get("dataset")))):
            if value is not None and was is not None and value.lower() != was.lower():
                raise ConfigError(f"--{flag} {value} differs from the run's saved {flag} {was} "
                                  f"({out / rundir.CONFIG}); drop --{flag} to resume, or start a new run "
                                  "in another --out")
        prune_names = {spec.name for spec in dataclasses.fields(PruneConfig)}
        resumed_config(out, {k: v for k, v in given.items() if k in prune_names}, flags=True)
    _check_train_flags(out, {k: v for k, v in given.items() if k in TRAIN_FLAGS})


def _check_train_flags(out: Path, given: Mapping[str, object]) -> None:
    """Training flags on a resume must match the recipe of the run's baseline, which is trained already."""
    found, folder = rundir.find_output(out), rundir.baseline_dir(out)
    trained = found.record.get("baseline_train") if found is not None else None
    if not isinstance(trained, dict) and (folder / rundir.MODEL_META).is_file():
        trained = rundir.read_model_meta(folder).get("train")
    if not given or not (isinstance(trained, dict) or rundir.has_checkpoint(folder)):
        return  # no baseline yet: the flags train it
    for key, value in given.items():
        was = trained.get(key) if isinstance(trained, dict) else None
        flag = f"--{key.replace('_', '-')} {value}"
        if was is None:
            raise ConfigError(f"{flag}: the baseline of the run in {out} is trained already; drop it to resume")
        if not _same_value(value, was):
            raise ConfigError(f"{flag} differs from the {key} {was} the baseline of the run in {out} was "
                              "trained with; drop it to resume")


def _same_value(given: object, saved: object) -> bool:
    numbers = (int, float)
    if isinstance(given, numbers) and isinstance(saved, numbers) and not isinstance(given, bool):
        return float(given) == float(saved)
    return given == saved


def _check_same_baseline(out: Path, from_dir: str | Path, model: nn.Module) -> None:
    """``--from`` on a resume must be the baseline the run started from (by its weights' sha256)."""
    recorded, digest = rundir.baseline_sha256(out), rundir.weights_sha256(model)
    if recorded is not None and recorded != digest:
        raise ConfigError(f"--from {from_dir} is not the baseline the run in {out} started from (weights sha256 "
                          f"{digest[:12]}..., the run's {recorded[:12]}...); resume without --from, or with "
                          "the baseline it started from")


def _check_dataset(meta: dict, data: Dataset) -> None:
    trained_on = _record_name(meta.get("dataset"))
    if trained_on and trained_on != data.name:
        raise ConfigError(f"the baseline was trained on {trained_on!r}, not {data.name!r}; pass --dataset {trained_on}")


def sensitivity_run(*, from_dir: str | Path, out: str | Path, method: str = "han",
                    data_dir: str | Path | None = None, tolerance: float = 1.0, progress: bool = True,
                    force: bool = False) -> dict:
    """``secateur sensitivity``: curves per layer of a trained baseline, saved with a plot.

    ``from_dir`` may be any folder holding a checkpoint (a baseline, or a prune run's model).
    """
    out = Path(out)
    rundir.check_out(out, "sensitivity", force=force, source=from_dir)
    baseline = load_baseline(from_dir)
    data = load_dataset(_record_name(baseline.meta.get("dataset")) or "mnist", data_dir)
    analysis = sensitivity(baseline.model, lambda m: evaluate(m, data, "val"), method=method,
                           tolerance=tolerance, progress=progress)
    with rundir.claim(out, "sensitivity", force=force, source=from_dir):
        rundir.write_sensitivity(out, analysis)
        atomic_write_bytes(out / rundir.SENSITIVITY_PNG, png_bytes(sensitivity_figure(analysis)))
    return analysis


def sweep_run(*, out: str | Path, methods: list[str], model: str | None = None,
              from_dir: str | Path | None = None, dataset: str | None = None,
              strengths: Sequence[float] = DEFAULT_STRENGTHS, retrain_epochs: int = 2,
              data_dir: str | Path | None = None, progress: bool = True, force: bool = False,
              weights: str | Path | None = None, workers: int = 1, worker_threads: int = 1,
              schedule: str = SWEEP_SCHEDULE, test: bool = False) -> dict:
    """``secateur sweep``: every method's trade-off curve, saved and plotted together (a baseline
    built from ``model`` starts from ``weights``, a local safetensors state dict, when given).

    ``schedule`` is ``iterative`` (each point continues the last) or ``oneshot`` (each point from the
    dense baseline); ``retrain_epochs=0`` measures pruning alone. ``test`` also measures every point's
    test accuracy (reported only: a sweep chooses nothing). ``workers`` > 1 computes the curves (one
    per method) in that many spawned processes of ``worker_threads`` torch threads each, with the
    seeds of the sequential sweep: the same points as ``workers=1`` at the same thread count.
    """
    out = Path(out)
    check_weights(weights, from_dir)
    check_sweep(methods, strengths, schedule)
    rundir.check_out(out, "sweep", force=force, source=from_dir)
    data = load_dataset(run_dataset(out, from_dir, dataset), data_dir)
    with rundir.claim(out, "sweep", force=force, source=from_dir):
        baseline = obtain_baseline(model, data, out, from_dir=from_dir, train_config=None, progress=progress,
                                   weights=weights)
        retrain = retrain_config(PruneConfig(retrain_epochs=retrain_epochs), baseline.train_config)
        val = functools.partial(evaluate, data=data, split="val")
        tester = functools.partial(evaluate, data=data, split="test") if test else None
        if workers > 1:
            source = from_dir if from_dir is not None else rundir.baseline_dir(out)
            tasks = [SweepTask(data.name, None if data_dir is None else str(data_dir), str(source),
                               retrain.to_dict(), method, tuple(strengths), schedule, test) for method in methods]
            curves = dict(zip(methods, parallel_map(sweep_curve, tasks, workers, worker_threads)))
            result = sweep_result(baseline.model, val, curves, strengths, schedule, tester)
        else:
            make_train, _, _ = default_callables(data, retrain)
            result = sweep(baseline.model, methods, make_train=make_train, evaluate=val,
                           strengths=strengths, schedule=schedule, progress=progress, test=tester)
        result.update(model=baseline.meta["model"], dataset=data.name)
        return sweep_report(rundir.write_sweep(out, result), out)

