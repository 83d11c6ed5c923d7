"""The configuration of one pruning run, validated once, in one place.

:class:`PruneConfig` holds the options common to the search and every granularity's own
options, flat, under the names the CLI flags (``--max-drop``), the recipe file (``max_drop:``)
and ``secateur.prune(max_drop=...)`` share. Each field's metadata carries its help text and
its value kind, from which :mod:`secateur.app.cli` builds the flags; which granularity reads
an option is declared by the granularity (:attr:`Granularity.options`), and a non-default
value for an option the chosen granularity does not read is a one-line error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from secateur.arguments import check_field_types
from secateur.errors import ConfigError
from secateur.io.schemas import INT64_MAX, MAX_EPOCHS, RECIPE_HINT, OptionsSchema
from secateur.search.bracket import SearchSettings
from secateur.search.pruner import ALLOCATIONS, GRANULARITIES, SCOPES, Granularity, method_names, option_owners
from secateur.search.schedules import SCHEDULES

CONFIDENCE = 0.5  # default z of the acceptance margin (see secateur.search.acceptance)
LEGACY = {"confidence": 0.0, "polish_epochs": 0}  # plain rule, no polish: runs from before these settings
MAX_RECOVERY = 1_000  # extra retraining passes of one round
MAX_CERTIFY_TRIES = 100  # candidates certified at most (each at level alpha / tries)


def _attention_units() -> list[str]:
    from secateur.structured.attention import ATTENTION_UNITS  # structured pruning imports this module

    return ATTENTION_UNITS.names()


def option(default: Any, help: str, kind: str | None = None, choices: Callable[[], list[str]] | None = None) -> Any:
    """A config field with its CLI help, value kind (None: Python / recipe only) and registry choices."""
    return field(default=default, metadata={"help": help, "kind": kind, "choices": choices})


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides a pruning run; saved as the run's ``config.yaml``.

    ``confidence`` and ``polish_epochs`` guard the bound against validation noise: a round
    counts as within ``max_drop`` only if its drop plus ``confidence`` paired standard errors
    is (:mod:`secateur.search.acceptance`), and the chosen model is retrained once more at length
    (``polish_epochs``, kept if it still passes the acceptance rule). ``certify`` holds a share of
    the validation split out of the search and bounds the final model's drop on it once
    (:mod:`secateur.search.certify`); ``dense_control`` measures drops against the stronger of the
    baseline and the baseline given the polish's training (:mod:`secateur.search.reference`).
    """

    method: str | None = option(None, "pruning method (default: the granularity's, e.g. han for weights, "
                                      "l1 for neurons / channels)", "str", method_names)
    granularity: str = option("weight", "what is pruned: weight (single weights, masks), kernel (conv kernels), "
                                        "n:m such as 2:4 (layers made N:M sparse), neuron (Linear outputs) or "
                                        "channel (also conv filters), both removed physically",
                              "str", GRANULARITIES.names)
    schedule: str = option("iterative", "how a round reaches its strength", "str", SCHEDULES.names)
    max_drop: float = option(0.1, "largest validation accuracy drop accepted, in percentage points", "float>=0")
    confidence: float = option(CONFIDENCE, "paired standard errors added to each round's validation drop before "
                                           "it is compared with max drop (0: plain rule)", "float>=0")
    rounds: int = option(15, "round budget of the search", "int>=1")
    start: float | None = option(None, "first strength (default: the granularity's, about 4x)", "float>0")
    step: float = option(0.5, "first strength step after a passed round", "float>0")
    growth: float = option(1.25, "step growth after every passed round", "float>=1")
    resolution: float = option(0.1, "bracket width at which the search stops bisecting", "float>0")
    patience: int = option(0, "retries of a strength whose bracket collapsed on a failure", "int>=0")
    retrain_epochs: int = option(3, "retraining epochs per round", "epochs")
    recovery: int = option(1, "extra retraining passes for a round over the bound before it fails", "int>=0")
    retrain_lr: float | None = option(None, "retraining learning rate (default: baseline lr x retrain lr factor)",
                                      "float>0")
    retrain_lr_factor: float = option(0.5, "retraining learning rate as a share of the baseline's", "float>0")
    polish_epochs: int | None = option(None, "final retraining of the chosen model, kept if within max drop "
                                             "(default: the baseline's epochs; 0: none)", "epochs")
    ramp_epochs: int = option(0, "finish with one smooth ramp: the gradual schedule from the dense baseline to the "
                                 "chosen strength over this many epochs at the baseline's learning rate, kept if "
                                 "within max drop and no worse (val accuracy, nonzero weights) than the chosen model "
                                 "(0: none; secateur's own retraining, data=)", "epochs")
    distill: float = option(0.0, "share of the dense model's soft targets in the retraining loss (0..1)",
                            "float>=0")
    temperature: float = option(4.0, "softening of the dense model's targets with distill", "float>0")
    targets: tuple[str, ...] | None = option(None, "tensors to prune (default: every Linear / Conv weight)", "names")
    include_bias: bool = option(False, "prune biases too")
    factors: Mapping[str, float] | None = option(None, "per-layer strength multipliers")
    allocation: str | None = option(None, "per-layer strengths (default: the method's, e.g. magnitude for han)", "str",
                                     ALLOCATIONS.names)
    tolerance: float = option(1.0, "points the layers may lose in total in the sensitivity analysis", "float>=0")
    seed: int = option(0, "seed of retraining and random methods", None)
    steps_per_round: int | None = option(None, "optimiser steps per round (gradual with a custom train)", None)
    scope: str = option("local", "local: the same fraction of every layer; global: one ranking across layers",
                        "str", SCOPES.names)
    min_channels: int = option(1, "channels every layer keeps at least", "int>=1")
    round_to: int = option(1, "keep a multiple of this many channels", "int>=1")
    ignore: tuple[str, ...] | None = option(None, "layers kept whole (comma-separated fnmatch patterns)", "names")
    attention: str = option("heads", "what an attention layer loses (neuron / channel): heads (whole heads) or "
                                     "head-dims (the same dimensions of every head)", "str", _attention_units)
    certify: float = option(0.0, "share of the validation split held out, disjoint from the search's images, to "
                                 "certify the final model once with a one-sided upper confidence bound of its "
                                 "drop (0: off; e.g. 0.5)", "share")
    certify_tries: int = option(3, "candidates certified at most (the final one, then the next most compressed "
                                   "accepted rounds); the level is Bonferroni-split over them", "int>=1")
    certify_level: float = option(0.95, "confidence of the certified upper bound", "level")
    dense_control: bool = option(False, "also give the dense baseline the polish's training and measure every drop "
                                        "against the stronger of the two", "flag")
    learn_epochs: int | None = option(None, "epochs of a learned method's own training phase before the search "
                                            "(sparse-vd, l0; default: the baseline's epochs)", "epochs")
    learn_penalty: float = option(1.0, "multiplier of a learned method's sparsity penalty in its training phase "
                                       "(l0: of lambda = 0.1 per attached weight per example; sparse-vd: of the "
                                       "KL term)", "float>0")
    exports: tuple[str, ...] | None = option(None, "export formats also written into the run folder as model.<suffix> "
                                             "(e.g. onnx: checked by onnxruntime, its latency in the report)", "names")

    @property
    def spec(self) -> Granularity:
        """The granularity's registered entry (``2:4`` resolves through the ``n:m`` family)."""
        return GRANULARITIES.get(self.granularity)

    @property
    def physical(self) -> bool:
        """Whether the architecture shrinks (neurons / channels removed) rather than weights masked."""
        return self.spec.physical

    def validate(self) -> PruneConfig:
        """Raise ConfigError (one line) on an impossible configuration; return it with defaults resolved."""
        PRUNE_OPTIONS.check_values(self)
        spec = self.spec
        config = dataclasses.replace(self, granularity=self.granularity.lower(),
                                     method=self.method or spec.default_method,
                                     start=spec.start if self.start is None else self.start)
        config._check_method(spec)
        config._check_schedule(spec)
        config._check_ramp(spec)
        config._check_options(spec)
        config._check_numbers()
        if spec.check is not None:
            spec.check(config)
        config.search_settings()
        return config

    def _check_method(self, spec: Granularity) -> None:
        if self.method not in spec.methods:
            raise ConfigError(f"method {self.method!r} does not apply to granularity {self.granularity!r}; "
                              f"choose one of: {', '.join(spec.methods.names())}")

    def _check_schedule(self, spec: Granularity) -> None:
        schedule = SCHEDULES.get(self.schedule)
        if schedule.continuous and not spec.continuous:
            raise ConfigError(f"the {self.schedule} schedule prunes during training, which granularity "
                              f"{self.granularity!r} cannot; use iterative or oneshot")

    def _check_ramp(self, spec: Granularity) -> None:
        if self.ramp_epochs and not spec.continuous:
            raise ConfigError(f"ramp epochs prune during training (the gradual schedule), which granularity "
                              f"{self.granularity!r} cannot; drop ramp_epochs or use a mask granularity")

    def _check_options(self, spec: Granularity) -> None:
        """Options that only other granularities read must keep their defaults."""
        defaults = PruneConfig()
        for name, owners in option_owners().items():
            if name not in spec.options and getattr(self, name) != getattr(defaults, name):
                raise ConfigError(f"option {name} applies to granularity {' / '.join(owners)}, "
                                  f"not {self.granularity!r}; drop it or change the granularity")

    def _check_numbers(self) -> None:
        checks = [
            (self.max_drop >= 0 and math.isfinite(self.max_drop),
             f"max drop must be >= 0 accuracy points, got {self.max_drop}"),
            (self.confidence >= 0 and math.isfinite(self.confidence),
             f"confidence must be >= 0 standard errors, got {self.confidence}"),
            (0 <= self.recovery <= MAX_RECOVERY,
             f"recovery passes must be in [0, {MAX_RECOVERY}], got {self.recovery}"),
            (0 <= self.retrain_epochs <= MAX_EPOCHS,
             f"retrain epochs must be in [0, {MAX_EPOCHS}], got {self.retrain_epochs}"),
            (0 <= self.ramp_epochs <= MAX_EPOCHS, f"ramp epochs must be in [0, {MAX_EPOCHS}], got {self.ramp_epochs}"),
            (self.polish_epochs is None or 0 <= self.polish_epochs <= MAX_EPOCHS,
             f"polish epochs must be in [0, {MAX_EPOCHS}], got {self.polish_epochs}"),
            (0 <= self.certify < 1, f"certify must be a share in [0, 1) of the validation split, got {self.certify}"),
            (1 <= self.certify_tries <= MAX_CERTIFY_TRIES,
             f"certify tries must be in [1, {MAX_CERTIFY_TRIES}], got {self.certify_tries}"),
            (0.5 <= self.certify_level < 1, f"certify level must be in [0.5, 1), got {self.certify_level}"),
            (self.learn_epochs is None or 1 <= self.learn_epochs <= MAX_EPOCHS,
             f"learn epochs must be in [1, {MAX_EPOCHS}], got {self.learn_epochs}"),
            (0 <= self.seed <= INT64_MAX, f"seed must be in [0, 2**63), got {self.seed}"),
            (0 <= self.distill <= 1 and self.temperature > 0,
             f"distill must be in [0, 1] and temperature > 0, got {self.distill} and {self.temperature}"),
            (0 < self.retrain_lr_factor <= 10, f"retrain lr factor must be in (0, 10], got {self.retrain_lr_factor}"),
            (self.retrain_lr is None or self.retrain_lr > 0,
             f"retrain learning rate must be > 0, got {self.retrain_lr}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def search_settings(self) -> SearchSettings:
        """The search's part of the configuration (no reopening when rounds restart)."""
        restarts = SCHEDULES.get(self.schedule).restart_from_baseline
        start = self.spec.start if self.start is None else self.start
        return SearchSettings(rounds=self.rounds, start=start, step=self.step, growth=self.growth,
                              resolution=self.resolution, patience=0 if restarts else self.patience).validate()

    def to_dict(self) -> dict:
        """Plain-data form (config.yaml, and a valid recipe)."""
        data = dataclasses.asdict(self)
        for key in ("targets", "ignore"):
            data[key] = list(data[key]) if data[key] is not None else None
        data["factors"] = dict(self.factors) if self.factors is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> PruneConfig:
        """A validated config from plain data (a recipe, config.yaml); errors name ``where`` (a file).

        Keys and types are checked by :data:`PRUNE_OPTIONS` (strict: unknown keys and strings for
        numbers are refused), then the values by :meth:`validate`.
        """
        config = PRUNE_OPTIONS.parse(data, where or "", hint=RECIPE_HINT if where else None)
        try:
            return config.validate()
        except ConfigError as error:
            raise type(error)(f"{where}: {error}" if where else str(error)) from None


def check_learned(method: str, learn: object, config: PruneConfig) -> None:
    """A learned method (one with a training phase) runs rounds that start from its learned weights:
    not inside a training loop (``gradual``); ``learn_epochs`` applies to learned methods only."""
    if learn is None:
        if config.learn_epochs is not None or config.learn_penalty != 1.0:
            raise ConfigError(f"learn epochs and learn penalty apply to methods with a training phase of their own "
                              f"(e.g. sparse-vd, l0), not {method!r}; drop them or change the method")
        return
    if SCHEDULES.get(config.schedule).continuous:
        raise ConfigError(f"method {method!r} learns its sparsity in a training phase of its own; the "
                          f"{config.schedule} schedule prunes inside training: use iterative or oneshot")
    if config.ramp_epochs:
        raise ConfigError(f"method {method!r} learns its sparsity in a training phase of its own; the final ramp "
                          f"prunes inside training from the dense model: drop ramp_epochs")


PRUNE_OPTIONS: OptionsSchema[PruneConfig] = OptionsSchema(PruneConfig)
"""The schema of the options (recipes, config.yaml's ``prune``), derived from the dataclass."""


def with_options(config: PruneConfig | None, options: Mapping[str, Any]) -> PruneConfig:
    """``config`` with keyword overrides applied; unknown keywords are a ConfigError."""
    names = {f.name for f in dataclasses.fields(PruneConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ConfigError(f"unknown prune option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    config = dataclasses.replace(config or PruneConfig(), **options)
    check_field_types(PruneConfig, vars(config), "prune option")  # max_drop="0.1": one line, not a TypeError
    return config.validate()
