"""``secateur.prune``: the smallest model within an accuracy drop bound.

Given a trained model, a way to retrain it and a way to measure validation accuracy, the
search (:mod:`secateur.search.bracket`) raises the pruning strength round by round, rolls
back and bisects when a retrained round breaks the bound, and returns the most compressed
feasible model. What a strength means, and how a model is pruned to it, is the business of
the granularity's :class:`~secateur.search.pruner.Pruner` (registered in
:data:`~secateur.search.pruner.GRANULARITIES`); how a round reaches its strength is the
schedule's (:mod:`secateur.search.schedules`). This module knows neither by name.

Decisions use validation accuracy only; test accuracy (when a test evaluator or a dataset is
given) is measured for the baseline and the final model, and only reported. Whether a round
is within the bound is decided by :mod:`secateur.search.acceptance` (the observed drop plus
``confidence`` paired standard errors, when per-example results are available). With
``certify``, the validation data is split before the first round and the held-out part bounds
the final model once (:mod:`secateur.search.certify`); with ``dense_control``, drops are
measured against the stronger of the baseline and its control (:mod:`secateur.search.reference`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from secateur.analysis.metrics import file_bytes
from secateur.analysis.summary import round_stats, size_summary
from secateur.arguments import (
    check_field_types,
    expect_callable,
    expect_instance,
    expect_mapping,
    expect_module,
    expect_path,
    expect_shape,
)
from secateur.distributed import (
    active,
    agree,
    is_writer,
    prune_hooks,
    session,
    sync_module,
    synced_pruner,
    synced_train,
    world_size,
    writer_context,
    writer_outcome,
)
from secateur.errors import ConfigError
from secateur.export import EXPORT_FORMATS
from secateur.io import rundir
from secateur.io.storage import atomic_write_bytes, save_model
from secateur.progress import progress_bar
from secateur.search.acceptance import Outcome, margin, within
from secateur.search.bracket import SearchState, initial_state, next_strength, record
from secateur.search.certify import Candidate, certification_setup, certified_outcome, certify
from secateur.search.config import LEGACY, PruneConfig, with_options
from secateur.search.pruner import Context, Evaluate, Pruner, PrunerState, Retrain, Step, Trainer
from secateur.search.reference import BASELINE, CONTROL, check_control, note, stronger, train_control
from secateur.search.schedules import SCHEDULES, Schedule
from secateur.train import StepFn, TrainConfig, correctness, distill_step, fit, frozen_teacher, resolve_device
from secateur.train import evaluate as evaluate_on
from secateur.unstructured.masks import prunable_names
from secateur.zoo.data import Dataset, load_dataset
from secateur.zoo.loaders import Loaders, a_few_batches, dataset_name, has_split, steps_per_epoch
from secateur.zoo.models import rebuild_record

ROUND_CONFIG = "config"  # the key of the configuration in every round's checkpoint header
RUN_COMPACT_CODEC = "zlib"  # model.compact's coder: standard library, fast; `secateur export` offers smaller
POLISH_SEED = 10_000  # offset of the polish's seed, away from the rounds' (seed + round index)
RAMP_SEED = 20_000  # offset of the final ramp's seed
LEARN_SEED = 30_000  # offset of a learned method's training phase's seed
MakeTrain = Callable[[int], Retrain]  # round index -> that round's retraining


@dataclass
class PruneResult:
    """The chosen model, every round, and the summary written to ``results.json``."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    out: Path | None = None

    @property
    def compression(self) -> float:
        """Parameters of the dense baseline / nonzero parameters of the pruned model."""
        return self.results["compression"]


@dataclass
class _Run:
    """The state of one pruning run while it executes."""

    config: PruneConfig
    baseline: nn.Module
    best: nn.Module  # the most compressed model within the bound so far (the baseline at first)
    pruner: Pruner
    schedule: Schedule
    evaluate: Evaluate
    make_train: MakeTrain
    baseline_val: Outcome
    input_shape: tuple[int, ...] | None
    out: Path | None
    state: SearchState
    history: list[dict]
    prior_seconds: float = 0.0  # wall time of rounds completed before a resume
    pruner_state: PrunerState = field(default_factory=dict)  # the best model's pruner state
    keep: int = 0  # accepted rounds kept as certification fallbacks (certify_tries when certifying)
    accepted: list[Candidate] = field(default_factory=list)  # the last ``keep`` accepted rounds, oldest first
    reference: str = BASELINE  # what drops are measured against: the baseline or its dense control
    reference_model: nn.Module | None = None  # the dense control, when it is the reference
    own_val: Outcome | None = None  # the baseline's own outcome, when the control replaced it in baseline_val
    control: dict | None = None  # the dense control's record (results.json's reference.control)
    control_model: nn.Module | None = None  # the dense control, whether or not it is the reference


def default_callables(data: Dataset | Loaders, retrain: TrainConfig, step: StepFn | None = None
                      ) -> tuple[MakeTrain, Evaluate, Evaluate | None]:
    """Retraining with :func:`secateur.train.fit` (seed = base seed + round) and evaluators."""

    def make_train(round_index: int) -> Retrain:
        config = retrain.replace(seed=retrain.seed + round_index)

        def train(model: nn.Module) -> None:
            fit(model, data, config, step=step, progress=False)

        return train

    test = (lambda m: evaluate_on(m, data, "test")) if has_split(data, "test") else None
    return make_train, lambda m: correctness(m, data, "val"), test


def retrain_config(config: PruneConfig, base: TrainConfig | None) -> TrainConfig:
    """The baseline recipe, shortened to ``retrain_epochs``, at a lower learning rate.

    Han et al. retrain at a tenth of the original rate over long runs. Our rounds are short
    (a few epochs, cosine-annealed), and at lr/10 they recover too little: on LeNet-5 the
    search stalled at 7.1x where lr/2 reached 14.1x within the same 0.1-point bound. So
    the default is half the baseline rate; ``retrain_lr_factor=0.1`` gives Han's.
    """
    base = base or TrainConfig()
    return base.replace(epochs=config.retrain_epochs, seed=config.seed,
                        lr=config.retrain_lr or base.lr * config.retrain_lr_factor)


def _judge(run: _Run, outcome: Outcome) -> tuple[float, float, bool]:
    """``(drop, margin, within)`` of a validation outcome against the baseline, in points."""
    drop = 100.0 * (run.baseline_val.accuracy - outcome.accuracy)
    extra = margin(run.baseline_val, outcome, run.config.confidence)
    return drop, extra, within(drop, run.config.max_drop, extra)


def _prune_and_retrain(run: _Run, candidate: nn.Module, strength: float) -> PrunerState:
    """One round's pruning and retraining of ``candidate``; returns its pruner state."""
    restart = run.schedule.restart_from_baseline
    previous, state = (0.0, {}) if restart else (run.state.best_strength, run.pruner_state)
    return run.schedule.run(candidate, previous, strength, run.pruner, run.make_train(run.state.round + 1),
                            run.config.steps_per_round, dict(state))


def measure(evaluate: Evaluate, model: nn.Module, baseline: Outcome | None = None,
            source: str = "evaluate") -> Outcome:
    """``evaluate(model)`` checked by :meth:`Outcome.of`, and of the same kind and length as ``baseline``."""
    outcome = Outcome.of(evaluate(model), source)
    if baseline is not None and _count(outcome) != _count(baseline):
        raise ConfigError(f"{source} returned {_kind(outcome)}, but {_kind(baseline)} for the baseline; it must "
                          "score the same validation examples, the same way, every call")
    return outcome


def _count(outcome: Outcome) -> int | None:
    return None if outcome.correct is None else outcome.correct.numel()


def _kind(outcome: Outcome) -> str:
    count = _count(outcome)
    return "an accuracy" if count is None else f"{count} per-example results"


def _run_round(run: _Run, strength: float) -> dict:
    """Try one strength; returns the history row (the candidate is kept if feasible)."""
    start = time.perf_counter()
    candidate = copy.deepcopy(run.baseline if run.schedule.restart_from_baseline else run.best)
    pruner_state = _prune_and_retrain(run, candidate, strength)
    outcome, passes = measure(run.evaluate, candidate, run.baseline_val), 0
    while not _judge(run, outcome)[2] and passes < run.config.recovery:
        passes += 1  # a round over the bound gets more retraining before it counts as failed
        run.make_train(1000 * (run.state.round + 1) + passes)(candidate)
        outcome = measure(run.evaluate, candidate, run.baseline_val)
    drop, extra, feasible = _judge(run, outcome)
    row = {"round": run.state.round + 1, "strength": strength, "level": run.pruner.levels(strength),
           "val_accuracy": outcome.accuracy, "drop": drop, "margin": extra, "feasible": feasible,
           "recovery_passes": passes}
    row.update(round_stats(candidate, run.baseline, run.pruner.targets, run.input_shape))
    row["seconds"] = time.perf_counter() - start
    row = agree(row)  # under torchrun: rank 0's row, and so its decision, on every rank
    if row["feasible"]:
        run.best, run.pruner_state = candidate, pruner_state
        if run.keep:
            kept = Candidate(int(row["round"]), candidate, float(row["compression"]))  # type: ignore[arg-type]
            run.accepted = [*run.accepted, kept][-run.keep:]
    run.state = record(run.state, strength, bool(row["feasible"]), run.config.search_settings())
    return row


def saturated(history: list[dict]) -> bool:
    """Whether the last round passed without removing anything the previous passed round kept.

    The pruner can go no further (every layer of an ``n:m`` run is already N:M; every group of a
    channel run is at ``min_channels``), so raising the strength again would only spend rounds.
    """
    passed = [row for row in history if row["feasible"]]
    return (len(passed) >= 2 and history[-1]["feasible"]
            and passed[-1]["params_nonzero"] == passed[-2]["params_nonzero"])


def _search(run: _Run, progress: bool, on_round: Callable[[dict], None] | None = None) -> None:
    """Rounds until the search settles; checkpoints after every round when ``out`` is set."""
    settings = run.config.search_settings()
    with progress_bar(progress, settings.rounds, "pruning") as advance:
        advance(run.state.round)
        while not saturated(run.history) and (strength := next_strength(run.state, settings)) is not None:
            row = _run_round(run, strength)
            run.history.append(row)
            if run.out is not None:
                rundir.write_history(run.out, run.history)
                rundir.save_round(run.out, run.best, run.state.to_dict(),
                                  {**run.pruner_state, ROUND_CONFIG: run.config.to_dict()})
            if on_round is not None:
                on_round(row)
            mark = "ok" if row["feasible"] else "over bound, rolled back"
            advance(status=f"round {row['round']}: {row['compression']:.1f}x, "
                           f"val drop {row['drop']:+.2f} (+{row['margin']:.2f} margin) pts ({mark})")


def _start(model: nn.Module, config: PruneConfig, evaluate: Evaluate, make_train: MakeTrain,
           input_shape: tuple[int, ...] | None, out: Path | None, meta: Mapping,
           batches: Callable[[], Iterable] | None = None, trainer: Trainer | None = None,
           folder: Path | None = None) -> _Run:
    """A fresh run: baseline measured, pruner ready (a learned method's training phase run), config and
    baseline written to ``out``. ``folder`` (default ``out``) is the run folder the pruner may keep
    analyses in: a resumed run passes its own, with no ``out``, so nothing else is written again."""
    targets = tuple(config.targets or prunable_names(model, include_bias=config.include_bias))
    if not targets:
        raise ConfigError("the model has no prunable tensors (Linear / Conv weights); pass targets=")
    spec = config.spec
    baseline = spec.prepare(model, targets)
    context = Context(targets, input_shape, evaluate, batches, folder if folder is not None else out, trainer)
    pruner, config = spec.build(baseline, config, context)
    pruner = synced_pruner(pruner)  # under torchrun: every cut rank 0's
    baseline_val = measure(evaluate, baseline)  # per-example results kept for paired comparisons
    if out is not None:
        rundir.write_config(out, {"prune": config.to_dict(), "baseline_val": baseline_val.accuracy, **meta})
        if not rundir.has_checkpoint(rundir.baseline_dir(out)):  # keep a trained baseline's own record
            _save(baseline, rundir.model_base(rundir.baseline_dir(out)), meta,
                  {"val": {"accuracy": baseline_val.accuracy}})
    return _Run(config, baseline, copy.deepcopy(baseline), pruner, SCHEDULES.get(config.schedule), evaluate,
                make_train, baseline_val, input_shape, out, initial_state(config.search_settings()), [])


def saved_config(out: Path) -> PruneConfig:
    """The PruneConfig a run folder was started with.

    Settings missing from an older ``config.yaml`` take the behaviour that run started with
    (:data:`LEGACY`), not today's default.
    """
    saved = {**LEGACY, **rundir.read_config(out)["prune"]}
    return PruneConfig.from_dict(saved, where=str(out / rundir.CONFIG))


def _resume(model: nn.Module, evaluate: Evaluate, make_train: MakeTrain,
            input_shape: tuple[int, ...] | None, out: Path, batches: Callable[[], Iterable] | None = None,
            trainer: Trainer | None = None) -> _Run:
    """Continue an interrupted run from its last completed round (a learned method's phase is read back
    from the run folder, or runs again, seeded, so its pruner is the one the rounds used)."""
    config = saved_config(out)
    run = _start(model, config, evaluate, make_train, input_shape, None, {}, batches, trainer, folder=out)
    run.out = out
    run.best, state, header = rundir.load_round(out, copy.deepcopy(run.baseline))
    check_unedited(run.config, header.get(ROUND_CONFIG), out)
    run.pruner_state = {key: header[key] for key in run.pruner.state_keys if key in header}
    run.state, run.history = SearchState.from_dict(state), rundir.read_history(out)[: state["round"]]
    run.prior_seconds = sum(row["seconds"] for row in run.history)
    return run


def check_unedited(config: PruneConfig, recorded: Mapping | None, out: Path) -> None:
    """Refuse to resume when ``config.yaml`` no longer says what the rounds so far ran with.

    Every round's checkpoint records the configuration; a hand edit half-way through a run
    (another method, another bound) would otherwise mix two runs in one history.
    """
    if recorded is None:  # a round written before the configuration was recorded
        return
    saved, defaults = config.to_dict(), PruneConfig().to_dict()
    for key in sorted(set(saved) | set(recorded)):
        if key not in recorded and saved.get(key) == defaults.get(key):
            continue  # an option added since that round was written, at its default (e.g. certify 0)
        if saved.get(key) != recorded.get(key):
            raise ConfigError(f"{out / rundir.CONFIG}: prune.{key} is {saved.get(key)!r} but the run's rounds ran with "
                              f"{recorded.get(key)!r}; restore the file or start a new run in another --out")


def _save(model: nn.Module, path: Path, meta: Mapping, metrics: Mapping) -> None:
    save_model(model, path, {**meta, "metrics": dict(metrics)})


def prune(model: nn.Module, *, data: Dataset | Loaders | str | None = None, train: Retrain | None = None,
          evaluate: Evaluate | None = None, test_evaluate: Evaluate | None = None,
          config: PruneConfig | None = None, train_config: TrainConfig | None = None,
          out: str | Path | None = None, resume: bool = False, force: bool = False, progress: bool = False,
          input_shape: tuple[int, ...] | None = None, meta: Mapping | None = None,
          polish: Retrain | None = None, on_round: Callable[[dict], None] | None = None,
          distributed: bool | None = None, certify_evaluate: Evaluate | None = None,
          **options: object) -> PruneResult:
    """Prune ``model`` to the smallest size whose validation drop stays within ``max_drop``.

    Give either ``data`` (a dataset, its name, or your own PyTorch data as
    :class:`~secateur.zoo.loaders.Loaders`: retraining and evaluation then use
    :func:`secateur.train.fit` at a fraction of ``train_config``'s learning rate) or your own
    ``train(model)`` and ``evaluate(model)`` callables.

    **The retraining contract.** ``train(model)`` (and ``polish(model)``) is handed the very
    model to retrain: a pruned *copy*, never the ``model`` you passed. Build the optimizer
    inside the callable from the model it is given (``torch.optim.SGD(model.parameters(), ...)``);
    one kept across rounds on purpose must be re-pointed at it first
    (``optimizer.param_groups[0]["params"] = list(model.parameters())``). An optimizer built once
    from your original model would step that original and leave every copy untrained, so a call
    that leaves every trainable parameter of its model unchanged stops the run with a one-line
    ConfigError.

    ``evaluate`` returns the validation
    accuracy (a fraction) or, better, a 1-D bool tensor saying which validation examples the
    model gets right: only then can a round's drop be judged with its paired standard error
    (``confidence``, see :mod:`secateur.search.acceptance`); with a bare accuracy the plain rule
    ``drop <= max_drop`` applies. Options are the fields of :class:`PruneConfig`, e.g.
    ``method="han", max_drop=0.1, schedule="iterative"``.
    With ``out``, the run directory (config, history, checkpoints, results, report) is
    written as it goes. ``out`` must be new, empty, or hold a prune run to replace
    (``force=True``) or to continue (``resume=True``: with its saved settings, options that
    differ from them refused, and the same baseline ``model``, checked by its weights' sha256);
    see :func:`secateur.io.rundir.check_out`.
    ``polish(model)`` replaces the final polish's training (default: :func:`secateur.train.fit`
    with the baseline's recipe for ``polish_epochs``, with ``data=`` only); ``on_round(row)``
    is called after every round with its history row, once the round is checkpointed.
    The input ``model`` is not modified. ``input_shape`` (one input, no batch dimension: MACs,
    latency, tracing) defaults to the data's. The run's model and dataset names (the report's
    title, ``model.json``) come from ``meta`` or, failing that, from the model and the data
    (:func:`run_meta`).
    ``distributed`` (None: when launched by ``torchrun``, or a process group is initialised) runs the
    search on every rank: retraining data-parallel, each cut, decision and evaluation rank 0's,
    files written by rank 0 alone (:mod:`secateur.distributed`); False: this process alone.
    ``certify=0.5`` holds half of ``data``'s validation split out of the search and certifies the
    final model on it once (:mod:`secateur.search.certify`); with your own callables, give
    ``certify_evaluate(model)`` (a bool tensor on images ``evaluate`` never scores) instead.
    ``dense_control=True`` measures every drop against the stronger of the baseline and the
    baseline given the polish's training (:mod:`secateur.search.reference`).
    """
    _check_arguments(model, data, (config, train_config), out, input_shape, meta,
                     {"train": train, "evaluate": evaluate, "test_evaluate": test_evaluate, "polish": polish,
                      "on_round": on_round, "certify_evaluate": certify_evaluate})
    run = functools.partial(_prune, model, data=data, train=train, evaluate=evaluate, test_evaluate=test_evaluate,
                            config=config, train_config=train_config, out=out, resume=resume, progress=progress,
                            input_shape=input_shape, meta=meta, polish=polish, on_round=on_round,
                            certify_evaluate=certify_evaluate, **options)
    if out is None and resume:
        raise ConfigError("resume needs the run folder (out=...)")
    with session(distributed):
        if out is None:
            return run()
        with writer_context(functools.partial(_claimed, Path(out), model, resume, force)):
            return run()


@contextlib.contextmanager
def _claimed(out: Path, model: nn.Module, resume: bool, force: bool) -> Iterator[rundir.Claim]:
    """The run folder claimed, and the baseline checked against a resumed run's."""
    with rundir.claim(out, "prune", resume=resume, force=force) as claimed:
        check_baseline(claimed, model)
        yield claimed


@dataclass
class _Setup:
    """What :func:`_prune` resolved before a run starts: the settings and every callable it calls."""

    config: PruneConfig
    data: Dataset | Loaders | None
    make_train: MakeTrain
    evaluate: Evaluate
    test_evaluate: Evaluate | None
    certify_evaluate: Evaluate | None
    polish: Retrain | None
    polish_config: TrainConfig
    step: StepFn | None
    input_shape: tuple[int, ...] | None
    meta: dict


def _setup(model: nn.Module, data: Dataset | Loaders | str | None, train: Retrain | None,
           evaluate: Evaluate | None, test_evaluate: Evaluate | None, certify_evaluate: Evaluate | None,
           config: PruneConfig, train_config: TrainConfig | None, polish: Retrain | None,
           input_shape: tuple[int, ...] | None, meta: Mapping | None) -> _Setup:
    """Resolve the data, the retraining, evaluation and polish callables and the run's metadata."""
    check_exports(config.exports)
    if isinstance(data, str):
        data = load_dataset(data)
    data, certify_evaluate = certification_setup(config, data, evaluate, certify_evaluate)
    config = _explicit(config, data, train, train_config)
    step = _distiller(model, config, train, train_config)
    make_train, evaluate, test_evaluate = _callables(data, train, evaluate, test_evaluate,
                                                     retrain_config(config, train_config), step)
    polish_config = (train_config or TrainConfig()).replace(seed=config.seed + POLISH_SEED)
    polish = checked(polish, "polish") if polish else _polisher(data, train, polish_config, config.polish_epochs, step)
    check_control(config.dense_control, polish)
    make_train, evaluate, test_evaluate, polish = prune_hooks(make_train, evaluate, test_evaluate, polish)
    certify_evaluate = writer_outcome(certify_evaluate, "certify_evaluate") if certify_evaluate else None
    input_shape = tuple(input_shape) if input_shape else (data.input_shape if data is not None else None)
    return _Setup(config, data, make_train, evaluate, test_evaluate, certify_evaluate, polish, polish_config,
                  step, input_shape, run_meta(model, data, meta, input_shape))


def _prune(model: nn.Module, *, data: Dataset | Loaders | str | None, train: Retrain | None,
           evaluate: Evaluate | None, test_evaluate: Evaluate | None,
           config: PruneConfig | None, train_config: TrainConfig | None,
           out: str | Path | None, resume: bool, progress: bool,
           input_shape: tuple[int, ...] | None, meta: Mapping | None,
           polish: Retrain | None, on_round: Callable[[dict], None] | None,
           certify_evaluate: Evaluate | None = None, **options: object) -> PruneResult:
    """:func:`prune`, once its run folder (if any) is claimed: set up, start or resume, search, finish."""
    s = _setup(model, data, train, evaluate, test_evaluate, certify_evaluate, settings(config, options, out, resume),
               train_config, polish, input_shape, meta)
    out_dir = Path(out) if out is not None else None
    started = time.perf_counter()
    batches = _taylor_batches(s.data) if s.data is not None else None
    trainer = (learning_trainer(s.data, train_config, s.config)
               if s.data is not None and train is None and learns(s.config) else None)
    run = (_resume(model, s.evaluate, s.make_train, s.input_shape, out_dir, batches, trainer)
           if resume and out_dir is not None and (out_dir / rundir.STATE).exists() else
           _start(model, s.config, s.evaluate, s.make_train, s.input_shape, out_dir if is_writer() else None,
                  s.meta, batches, trainer))
    run.out = run.out if is_writer() else None  # under torchrun only rank 0 writes the run folder
    sync_module(run.best, "starting model")  # e.g. every rank loaded the same round: now bitwise rank 0's
    _keep_fallbacks(run, s.certify_evaluate is not None)
    _control(run, s.polish)
    _search(run, progress and is_writer(), on_round)
    result = _complete(run, s, train, started)
    result.results, result.out = agree(result.results), out_dir  # rank 0's results (its file sizes) everywhere
    return result


def _complete(run: _Run, s: _Setup, train: Retrain | None, started: float) -> PruneResult:
    """After the search: polish, the final ramp, certification and the outputs (``started``: the run's clock)."""
    polished = _polish(run, s.polish)
    ramp_config = s.polish_config.replace(seed=s.config.seed + RAMP_SEED)
    ramped = _ramp(run, *_ramper(s.data, train, ramp_config, s.config, s.step))
    certified = _certify(run, _final_step(polished, ramped), s.certify_evaluate)
    return _finish(run, s.test_evaluate, s.meta, time.perf_counter() - started, polished, certified, ramped)


def run_meta(model: nn.Module, data: Dataset | Loaders | None, meta: Mapping | None,
             input_shape: tuple[int, ...] | None) -> dict:
    """``meta`` with the run's names filled in, so an API run is titled and its checkpoints rebuild.

    ``dataset``: the data's name (``"custom"`` for your own Loaders without a name, or callables).
    ``model``: what rebuilds it (:func:`secateur.zoo.models.rebuild_record`: the record
    ``build_model`` left on it, or your importable class); without one the report shows the
    class name and ``load_model`` needs ``model=``.
    """
    filled = dict(meta or {})
    filled.setdefault("dataset", dataset_name(data) if data is not None else "custom")
    if "model" not in filled:
        num_classes = data.num_classes if data is not None else None
        record = rebuild_record(model, input_shape, num_classes)
        if record is not None:
            filled["model"] = record
    return filled


def _check_arguments(model: object, data: object, configs: tuple[object, object], out: object,
                     input_shape: object, meta: object, callables: Mapping[str, object]) -> None:
    """One-line ConfigErrors for :func:`prune` arguments of the wrong kind, before any work starts."""
    expect_module(model)
    expect_instance(data, (Dataset, Loaders, str), "data", "a secateur Dataset, a dataset name such as 'mnist', "
                    "or your DataLoaders as secateur.Loaders(train=..., val=...)")
    expect_instance(configs[0], PruneConfig, "config", "a PruneConfig")
    expect_instance(configs[1], TrainConfig, "train_config", "a TrainConfig")
    if configs[1] is not None:
        check_field_types(TrainConfig, vars(configs[1]), "training option")
    for name, value in callables.items():
        expect_callable(value, name, "the history row" if name == "on_round" else "the model")
    expect_path(out)
    expect_shape(input_shape)
    expect_mapping(meta, "meta")


def settings(config: PruneConfig | None, options: Mapping[str, object], out: str | Path | None,
             resume: bool) -> PruneConfig:
    """The run's settings: ``config`` with ``options``; a resumed run keeps the ones it started with."""
    if resume and out is not None and (Path(out) / rundir.CONFIG).exists():
        return resumed_config(Path(out), options)
    return with_options(config, options)


def check_baseline(claimed: rundir.Claim, model: nn.Module) -> None:
    """Record the baseline's weights digest in the run's marker; a resumed run needs the same baseline."""
    digest = rundir.weights_sha256(model)
    recorded = rundir.baseline_sha256(claimed.out) if claimed.resumed else None
    if recorded is not None and recorded != digest:
        raise ConfigError(f"the model given is not the baseline the run in {claimed.out} started from "
                          f"(weights sha256 {digest[:12]}..., the run's {recorded[:12]}...); resume with that baseline")
    if claimed.record.get("baseline_sha256") != digest:
        claimed.note(baseline_sha256=digest)


def resumed_config(out: Path, given: Mapping[str, object], flags: bool = False) -> PruneConfig:
    """The configuration the run in ``out`` started with, after refusing any ``given`` option whose
    value differs from the saved one (``flags``: named as command-line flags)."""
    saved = saved_config(out)
    names = {spec.name for spec in dataclasses.fields(PruneConfig)}
    for key, value in given.items():
        if key not in names:
            raise ConfigError(f"unknown prune option(s) {key}; valid: {', '.join(sorted(names))}")
        if not _same_option(saved, key, value):
            shown = f"--{key.replace('_', '-')} {_plain(value)}" if flags else f"{key}={value!r}"
            raise ConfigError(f"{shown} differs from the run's saved {key} {_plain(getattr(saved, key))} "
                              f"({out / rundir.CONFIG}); drop it to resume with the saved settings, "
                              "or start a new run in another --out")
    return saved


def _same_option(saved: PruneConfig, key: str, value: object) -> bool:
    """Whether ``key=value`` leaves ``saved`` unchanged, compared once validated (5 == 5.0)."""
    try:
        candidate = PruneConfig.from_dict({**saved.to_dict(), key: value})
    except (ConfigError, TypeError, ValueError):
        return False
    return getattr(candidate, key) == getattr(saved, key)


def _plain(value: object) -> str:
    """A value as typed on the command line (``a,b`` for a list of names)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _explicit(config: PruneConfig, data: Dataset | Loaders | None, train: Retrain | None,
              train_config: TrainConfig | None) -> PruneConfig:
    """Fill the settings that depend on the data path, so config.yaml records what ran."""
    default_path = data is not None and train is None
    if default_path and data is not None and config.steps_per_round is None:
        retrain = retrain_config(config, train_config)
        steps = retrain.epochs * steps_per_epoch(data, retrain.batch_size)
        config = dataclasses.replace(config, steps_per_round=steps)
    if config.polish_epochs is None:
        epochs = (train_config or TrainConfig()).epochs if default_path else 0
        config = dataclasses.replace(config, polish_epochs=epochs)
    return config


def _distiller(model: nn.Module, config: PruneConfig, train: Retrain | None,
               train_config: TrainConfig | None) -> StepFn | None:
    """The retraining step that distils from the dense ``model`` (``config.distill`` > 0)."""
    if config.distill == 0:
        return None
    if train is not None:
        raise ConfigError("distill applies to secateur's own retraining (data=); a train= callable must distil itself")
    teacher = frozen_teacher(model).to(resolve_device((train_config or TrainConfig()).device))
    return functools.partial(distill_step, teacher=teacher, weight=config.distill, temperature=config.temperature)


def learning_trainer(data: Dataset | Loaders, base: TrainConfig | None, config: PruneConfig) -> Trainer:
    """The training loop a learned method's phase runs with: :func:`fit` on ``data`` with the baseline
    recipe (the method changes what it needs, e.g. the optimizer) for ``learn_epochs`` (default: the
    baseline's epochs)."""
    recipe = (base or TrainConfig()).replace(seed=config.seed + LEARN_SEED)
    epochs = config.learn_epochs if config.learn_epochs is not None else recipe.epochs

    def run(model: nn.Module, step: Step, changes: dict) -> None:
        fit(model, data, recipe.replace(epochs=epochs, **changes), step=step, progress=False)

    return Trainer(run, train_examples(data), epochs, lambda batch_size: steps_per_epoch(data, batch_size),
                   config.learn_penalty, recipe.seed, phase_data(data, recipe))


def phase_data(data: Dataset | Loaders, recipe: TrainConfig) -> str:
    """What a learned phase trains on, as a kept phase is matched: the dataset's name (your loaders:
    their class) and the recipe's training settings (the device left out: a phase moves with the run;
    the epochs and seed are matched on as the phase's own)."""
    source = getattr(data, "name", None) or type(getattr(data.train, "dataset", data.train)).__name__
    settings = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in ("device", "epochs", "seed")}
    return f"{source} {sorted(settings.items())}"


def learns(config: PruneConfig) -> bool:
    """Whether the configured method declares a training phase of its own (``learn``)."""
    return getattr(config.spec.methods.get(str(config.method)), "learn", None) is not None


def train_examples(data: Dataset | Loaders) -> int:
    """Examples in the training split (your Loaders: in the train DataLoader's dataset)."""
    source = getattr(data.train, "dataset", data.train)
    try:
        return len(source)  # type: ignore[arg-type]  # Sized, or the TypeError below
    except TypeError:  # an iterable dataset
        raise ConfigError("a learned method scales its penalty by the number of training examples: give the "
                          "train data a __len__ (a map-style Dataset)") from None


def _taylor_batches(data: Dataset | Loaders) -> Callable[[], Iterable]:
    """A few fixed training batches (for methods that need gradients, e.g. taylor)."""
    return lambda: a_few_batches(data)


def _callables(data: Dataset | Loaders | None, train: Retrain | None, evaluate: Evaluate | None,
               test_evaluate: Evaluate | None, retrain: TrainConfig, step: StepFn | None = None
               ) -> tuple[MakeTrain, Evaluate, Evaluate | None]:
    """Resolve user callables, falling back on the dataset's defaults."""
    if data is not None:
        default_train, default_eval, default_test = default_callables(data, retrain, step)
        return (_every_round(train) if train else default_train, evaluate or default_eval,
                test_evaluate or default_test)
    if train is None or evaluate is None:
        raise ConfigError("give data= (a dataset or its name) or both train= and evaluate= callables")
    return _every_round(train), evaluate, test_evaluate


def _every_round(train: Retrain) -> MakeTrain:
    """The same user ``train`` callable for every round, checked after every call (:func:`checked`)."""
    train = checked(train, "train")
    return lambda _round: train


def checked(train: Retrain, name: str) -> Retrain:
    """``train``, raising a one-line ConfigError when a call leaves the model it was given unchanged.

    secateur retrains *copies* (each round's candidate, the polish's), so a loop whose optimizer
    was built once from the original model steps that original and never the copy: the search
    would judge untrained rounds and say nothing. A snapshot of the trainable parameters before
    the call, compared after it, catches that at the first round.
    """

    def run(model: nn.Module) -> None:
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        train(model)
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        if before and len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after)):
            raise ConfigError(
                f"{name}= left every trainable parameter of the model it was given unchanged: its optimizer was "
                "probably built from another model (e.g. the original, before prune copied it); build the "
                f"optimizer inside {name}(model) from that model's parameters, or re-point a kept one at them "
                "(optimizer.param_groups[0]['params'] = list(model.parameters()))")

    return run


def _polisher(data: Dataset | Loaders | None, train: Retrain | None, base: TrainConfig, epochs: int | None,
              step: StepFn | None = None) -> Retrain | None:
    """The polish's training: the baseline's recipe and learning rate for ``epochs`` (dataset path only).

    Retraining a pruned network with the original schedule from its current weights
    ("learning-rate rewinding", Renda et al. 2020) recovers more than fine-tuning at a small
    rate. On LeNet-300 at 13x it took test error from 1.04% to 0.91% where 20 epochs at half
    the rate reached 1.02% and 40 epochs 0.97% (baseline 0.87%).
    """
    if data is None or train is not None or not epochs:  # None only before _explicit fills it in
        return None
    config = base.replace(epochs=epochs)

    def polish(model: nn.Module) -> None:
        fit(model, data, config, step=step, progress=False)

    return polish


def _polish(run: _Run, train: Retrain | None) -> dict | None:
    """Retrain the chosen model once more at length, masks fixed, as Han et al. did at the end.

    Each round's short retraining leaves some accuracy on the table; a full-length final run
    recovers part of it. The polished model replaces the chosen one if its validation drop is
    within the bound (the plain rule: the answer never breaks the bound). The noise margin is
    not added: it guards the search, which judges many rounds on the same images and keeps the
    luckiest, while the polish is one model at the already chosen size, judged once. Nor must
    it match the chosen round's validation accuracy, which is biased upwards by that same
    selection. On the LeNet-300 benchmark the margin threw away a polish at a drop of 0.04
    points (0.066 margin); the model kept instead was 0.19 test points below the baseline,
    the polished one 0.08.
    """
    best = run.state.best_round
    if train is None or not best:
        return None
    before = run.history[best - 1]["val_accuracy"]
    candidate = copy.deepcopy(run.best)
    train(candidate)
    outcome = measure(run.evaluate, candidate, run.baseline_val)
    drop, extra, _ = _judge(run, outcome)
    kept = within(drop, run.config.max_drop)
    if kept:
        run.best = candidate
    return {"epochs": run.config.polish_epochs, "kept": kept, "val_accuracy_before": before,
            "val_accuracy_after": outcome.accuracy, "drop": drop, "margin": extra}


def _keep_fallbacks(run: _Run, certifying: bool) -> None:
    """Keep the last ``certify_tries`` accepted rounds as fallbacks (a resumed run: its best so far)."""
    run.keep = run.config.certify_tries if certifying else 0
    best = run.state.best_round
    if run.keep and best:  # rounds before a resume are on disk as the best so far only
        run.accepted = [Candidate(best, run.best, run.history[best - 1]["compression"])]


def _control(run: _Run, polish: Retrain | None) -> None:
    """With ``dense_control``: the baseline given the polish's training, the reference if stronger."""
    if not run.config.dense_control or polish is None:
        return
    control = train_control(run.baseline, polish)
    outcome = measure(run.evaluate, control, run.baseline_val)
    used = stronger(run.baseline_val, outcome)
    run.own_val = run.baseline_val
    run.control_model = control
    run.control = {"epochs": run.config.polish_epochs, "val": {"accuracy": outcome.accuracy}}
    if used == CONTROL:
        run.baseline_val, run.reference, run.reference_model = outcome, CONTROL, control


def _final_step(polished: dict | None, ramped: dict | None) -> dict | None:
    """The later of the polish and the final ramp that was kept: the step that made the chosen model."""
    return next((step for step in (ramped, polished) if step and step["kept"]), None)


def _certify(run: _Run, final: dict | None, certify_evaluate: Evaluate | None) -> dict | None:
    """Certify the final candidate, else the next most compressed accepted rounds; sets ``run.best``."""
    if certify_evaluate is None:
        return None
    reference = certified_outcome(certify_evaluate, run.reference_model or run.baseline)
    candidates = _candidates(run, final)
    chosen, record = certify(candidates, reference, certify_evaluate, run.config)
    run.best = candidates[chosen].model if chosen is not None else copy.deepcopy(run.baseline)
    record["reference"] = run.reference
    record["search_images"] = _count(run.baseline_val)
    return record


def _candidates(run: _Run, final: dict | None) -> list[Candidate]:
    """The final model first, then the other kept accepted rounds, most compressed first."""
    best = run.state.best_round
    if not best:
        return []
    compression = run.history[best - 1]["compression"]
    if final and final["kept"] and "params_nonzero_after" in final:  # a kept ramp: its own size
        compression = round_stats(run.best, run.baseline, (), None)["compression"]
    last = Candidate(best, run.best, compression, bool(final and final["kept"]))
    return [last, *(c for c in reversed(run.accepted) if c.round != best)]


def _chosen(run: _Run, final: dict | None, certified: dict | None) -> tuple[int | None, float, float]:
    """``(round, search-images val accuracy, margin)`` of the model returned."""
    best = run.state.best_round
    if certified is not None:
        best = certified["chosen_round"]
        rows = [row for row in certified["candidates"] if row["certified"]]
        if rows and not rows[0]["polished"]:
            final = None
    if not best:
        return None, (run.own_val or run.baseline_val).accuracy, 0.0
    if final and final["kept"]:
        return best, final["val_accuracy_after"], final["margin"]
    row = run.history[best - 1]
    return best, row["val_accuracy"], row.get("margin", 0.0)


def _reference(run: _Run, test_evaluate: Evaluate | None, test_baseline: float | None,
               pruned: tuple[float, float | None]) -> tuple[dict, float | None]:
    """``results.json``'s ``reference``, and the reference's test accuracy."""
    own = run.own_val or run.baseline_val
    control, test_reference = None, test_baseline
    if run.control is not None:
        test_control = (measure(test_evaluate, run.control_model, source="test_evaluate").accuracy
                        if test_evaluate and run.control_model is not None else None)
        control = {**run.control, "test": {"accuracy": test_control}}
        test_reference = test_control if run.reference == CONTROL else test_baseline
    control_val = None if run.control is None else Outcome(run.control["val"]["accuracy"])
    record = {"used": run.reference, "control": control, "note": note(run.reference, own, control_val),
              "drop_vs_baseline": {"val": 100 * (own.accuracy - pruned[0]), "test": _points(test_baseline, pruned[1])}}
    return record, test_reference


def _ramper(data: Dataset | Loaders | None, train: Retrain | None, base: TrainConfig, config: PruneConfig,
            step: StepFn | None) -> tuple[Retrain | None, int]:
    """The final ramp's training (the baseline's recipe for ``ramp_epochs``; dataset path only) and its steps."""
    ramp = _polisher(data, train, base, config.ramp_epochs, step)
    if ramp is None or data is None:
        return None, 0
    steps = config.ramp_epochs * steps_per_epoch(data, base.batch_size)
    return (synced_train(ramp) if active() else ramp), steps


def _ramp(run: _Run, train: Retrain | None, steps: int) -> dict | None:
    """One smooth ramp from the dense baseline to the chosen strength, kept only if no worse.

    The search reaches its strength in steps, each judged and some rolled back; knowing the
    answer, one gradual ramp (Zhu & Gupta's cubic schedule, pruning while training) from the
    dense model, at the baseline's learning rate (rewinding), wastes no round. It replaces the
    chosen model only if it passes the search's own rule (with the margin) and has no lower
    validation accuracy and no more nonzero weights than the chosen model.
    """
    if train is None or not run.state.best_round:
        return None
    start, chosen = time.perf_counter(), _chosen_stats(run)
    candidate = copy.deepcopy(run.baseline)
    state = SCHEDULES.get("gradual").run(candidate, 0.0, run.state.best_strength, run.pruner, train, steps, {})
    outcome = measure(run.evaluate, candidate, run.baseline_val)
    drop, extra, feasible = _judge(run, outcome)
    nonzero = round_stats(candidate, run.baseline, run.pruner.targets, run.input_shape)["params_nonzero"]
    kept = bool(agree({"kept": feasible and outcome.accuracy >= chosen["val_accuracy"]
                       and nonzero <= chosen["params_nonzero"]})["kept"])
    if kept:
        run.best, run.pruner_state = candidate, state
    return {"epochs": run.config.ramp_epochs, "strength": run.state.best_strength, "kept": kept,
            "val_accuracy_before": chosen["val_accuracy"], "val_accuracy_after": outcome.accuracy,
            "params_nonzero_before": chosen["params_nonzero"], "params_nonzero_after": nonzero,
            "drop": drop, "margin": extra, "seconds": time.perf_counter() - start}


def _chosen_stats(run: _Run) -> dict:
    """Validation accuracy (measured again: after any polish) and nonzero weights of the chosen model."""
    stats = round_stats(run.best, run.baseline, run.pruner.targets, run.input_shape)
    return {"val_accuracy": measure(run.evaluate, run.best, run.baseline_val).accuracy,
            "params_nonzero": stats["params_nonzero"]}


def _finish(run: _Run, test_evaluate: Evaluate | None, meta: dict, seconds: float,
            polished: dict | None = None, certified: dict | None = None,
            ramped: dict | None = None) -> PruneResult:
    """Measure the chosen model, write the model, results and report, and return them."""
    chosen, baseline = run.best, run.baseline
    test_baseline = measure(test_evaluate, baseline, source="test_evaluate").accuracy if test_evaluate else None
    test_pruned = measure(test_evaluate, chosen, source="test_evaluate").accuracy if test_evaluate else None
    chosen_round, pruned_val, margin_points = _chosen(run, _final_step(polished, ramped), certified)
    reference, test_reference = _reference(run, test_evaluate, test_baseline, (pruned_val, test_pruned))
    results = {
        "method": run.config.method, "model": _class_name(baseline),  # a rebuild record in meta wins
        "schedule": run.config.schedule, "granularity": run.config.granularity, "max_drop": run.config.max_drop,
        **meta,
        "baseline": {"val": {"accuracy": (run.own_val or run.baseline_val).accuracy},
                     "test": {"accuracy": test_baseline}},
        "pruned": {"val": {"accuracy": pruned_val}, "test": {"accuracy": test_pruned}},
        "acceptance": {"confidence": run.config.confidence, "paired": run.baseline_val.correct is not None,
                       "margin": margin_points},
        "polish": polished, "ramp": ramped,
        "drop": {"val": 100 * (run.baseline_val.accuracy - pruned_val),
                 "test": _points(test_reference, test_pruned),
                 "certified": None if certified is None else certified["drop"],
                 "certified_ucb": None if certified is None else certified["ucb"]},
        "reference": reference,
        "certification": certified,
        **size_summary(chosen, run.baseline, run.pruner.targets, run.input_shape, run.config.physical),
        "seconds": seconds + run.prior_seconds,
        "rounds": len(run.history), "chosen_round": chosen_round, "saturated": saturated(run.history),
        "processes": world_size(),
        "learned": learned_info(run.pruner),
    }
    if run.out is not None:
        _write_outputs(run, run.out, chosen, results, meta)
    return PruneResult(chosen, run.history, results, run.out)


def learned_info(pruner: Pruner) -> dict | None:
    """What a learned method's training phase reported (None for other methods): its epochs, and
    e.g. the weights Sparse VD keeps at its own threshold, or the gates L0 left open."""
    learned = getattr(pruner, "learned", None)
    return json_safe(learned.info) if learned is not None else None


def _class_name(model: nn.Module) -> str:
    """The model's class name (that of the class under torch's parametrization wrapper, if any)."""
    cls = type(model)
    return cls.__mro__[1].__name__ if parametrize.is_parametrized(model) else cls.__name__


def _write_compact(chosen: nn.Module, out: Path) -> int:
    """Write the chosen model as ``model.compact`` (fp32, bit-exact; zlib: fast on any model size)
    and return its real size in bytes."""
    from secateur.export.compact import encode_model  # lazy: only runs that write a folder need it

    data, _ = encode_model(chosen, codec_name=RUN_COMPACT_CODEC)
    atomic_write_bytes(out / rundir.COMPACT, data)
    return file_bytes(out / rundir.COMPACT)


def _points(before: float | None, after: float | None) -> float | None:
    """An accuracy drop in percentage points; None without both accuracies (no test evaluator)."""
    return None if before is None or after is None else 100 * (before - after)


def check_exports(names: tuple[str, ...] | None) -> None:
    """Unknown export format names fail before any round runs, not after the search (one line)."""
    for name in names or ():
        EXPORT_FORMATS.get(name)


def _write_export(chosen: nn.Module, out: Path, name: str, input_shape: tuple[int, ...] | None) -> dict:
    """Write the chosen model in export format ``name`` into the run folder; its file, real bytes and details."""
    spec = EXPORT_FORMATS.get(name)
    given = {"input_shape": input_shape} if input_shape and "input_shape" in spec.options else {}
    path = rundir.export_file(out, spec.suffix)
    details = spec.write(chosen, path, spec.parse_options(given))
    return {"file": path.name, "bytes": file_bytes(path), **json_safe(details)}


def json_safe(details: Mapping[str, object]) -> dict:
    """An export's details as JSON values (anything else as its string)."""
    return json.loads(json.dumps(dict(details), default=str))


def _write_outputs(run: _Run, out: Path, chosen: nn.Module, results: dict, meta: dict) -> None:
    """model.safetensors/.json, results.json and the report in the run folder."""
    from secateur.report import render_report  # lazy: matplotlib is slow to import, and only runs write reports

    _save(chosen, rundir.model_base(out), {**meta, **run.pruner_state},
          {"val": results["pruned"]["val"], "test": results["pruned"]["test"]})
    results["bytes"].update(baseline=file_bytes(rundir.baseline_dir(out) / rundir.WEIGHTS),
                            pruned=file_bytes(out / rundir.WEIGHTS), compact=_write_compact(chosen, out))
    if run.config.exports:
        results["exports"] = {name: _write_export(chosen, out, name, run.input_shape) for name in run.config.exports}
    rundir.write_results(out, results)
    render_report(out)


# The pieces secateur.search.session drives round by round from a loop it does not own.
Run = _Run
start_run, prune_round, judge, finish_run = _start, _prune_and_retrain, _judge, _finish
