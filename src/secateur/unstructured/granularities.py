"""The mask granularities of the search: ``weight``, ``kernel`` and the ``n:m`` family (``2:4``).

Each registers a :class:`~secateur.search.pruner.Granularity` that builds its pruner
(:mod:`secateur.unstructured.pruner`) from a masked copy of the baseline. Per-layer strength
factors for ``weight`` come from an allocation registered in :data:`ALLOCATIONS`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable

import torch
from torch import nn

from secateur.analysis.sensitivity import magnitude_factors, sensitivity
from secateur.errors import ConfigError
from secateur.io.rundir import write_sensitivity
from secateur.registry import Subset
from secateur.search.acceptance import Outcome
from secateur.search.config import PruneConfig, check_learned
from secateur.search.pruner import (
    ALLOCATIONS,
    GRANULARITIES,
    LEARNED,
    Context,
    Granularity,
    learn_phase,
    register,
)
from secateur.unstructured.masks import apply_masks, effective
from secateur.unstructured.methods import WEIGHT_METHODS
from secateur.unstructured.pruner import (
    KernelPruner,
    NMPruner,
    WeightPruner,
    kernel_norms,
    kernel_targets,
    nm_order,
    nm_sizes,
    reference_stds,
)

Allocate = Callable[[nn.Module, PruneConfig, Context, tuple[str, ...]], "dict[str, float] | None"]


@ALLOCATIONS.register("uniform")
def _uniform(model: nn.Module, config: PruneConfig, context: Context, targets: tuple[str, ...]) -> None:
    """The same strength for every layer."""
    return None


@ALLOCATIONS.register("magnitude")
def _magnitude(model: nn.Module, config: PruneConfig, context: Context, targets: tuple[str, ...]) -> dict[str, float]:
    """Per-layer strengths from where one global |w| threshold would cut the dense weights."""
    return magnitude_factors(model, targets)


@ALLOCATIONS.register("sensitivity")
def _sensitivity(model: nn.Module, config: PruneConfig, context: Context,
                 targets: tuple[str, ...]) -> dict[str, float]:
    """Per-layer strengths from a sensitivity analysis of each layer pruned alone."""
    analysis = sensitivity(model, lambda m: Outcome.of(context.evaluate(m)).accuracy, method=str(config.method),
                           targets=targets, tolerance=config.tolerance)
    if context.out is not None:
        write_sensitivity(context.out, analysis)
    return analysis["factors"]


def masked_copy(model: nn.Module, targets: tuple[str, ...]) -> nn.Module:
    """A copy of ``model`` with all-ones masks on ``targets`` (so optimisers see them from the start)."""
    masked = copy.deepcopy(model)
    apply_masks(masked, {name: torch.ones_like(effective(masked, name), dtype=torch.bool) for name in targets})
    return masked


def allocation_of(config: PruneConfig) -> str:
    """The allocation in force: the configured one, else the method's default (han: magnitude)."""
    return config.allocation or WEIGHT_METHODS.get(str(config.method)).allocation


def _check_weight(config: PruneConfig) -> None:
    ALLOCATIONS.get(allocation_of(config))
    per_layer = config.factors or allocation_of(config) != "uniform"
    method = WEIGHT_METHODS.get(str(config.method))
    if method.scope == "global" and per_layer:
        raise ConfigError(f"per-layer factors do not apply to {config.method} (one threshold for all layers)")
    check_learned(method.name, method.learn, config)


def _build_weight(baseline: nn.Module, config: PruneConfig, context: Context) -> tuple[WeightPruner, PruneConfig]:
    targets = context.targets
    if not config.factors:
        factors = ALLOCATIONS.get(allocation_of(config))(baseline, config, context, targets)
        if factors is not None:
            config = dataclasses.replace(config, factors=factors)
    method = WEIGHT_METHODS.get(str(config.method))
    learned = learn_phase(method.name, method.learn, baseline, targets, context)
    pruner = WeightPruner(method, targets, dict(config.factors or {}), reference_stds(baseline, targets), config.seed,
                          (LEARNED,) if learned is not None else (), learned)
    return pruner, config


register(Granularity(
    name="weight", doc="single weights, zeroed by masks (unstructured sparsity)", methods=WEIGHT_METHODS,
    default_method="han", start=2.0, options=frozenset({"allocation", "factors", "tolerance", "learn_epochs",
                                                           "learn_penalty"}),
    physical=False, continuous=True, prepare=masked_copy, build=_build_weight, check=_check_weight))


def _prepare_kernels(model: nn.Module, targets: tuple[str, ...]) -> nn.Module:
    return masked_copy(model, kernel_targets(model, targets))


MASK_METHODS = Subset(WEIGHT_METHODS, lambda method: method.learn is None)
"""The weight methods kernels and N:M patterns take: a learned method's scores are per single weight."""


def _build_kernel(baseline: nn.Module, config: PruneConfig, context: Context) -> tuple[KernelPruner, PruneConfig]:
    targets = kernel_targets(baseline, context.targets)
    if not targets:
        raise ConfigError("granularity 'kernel' needs conv layers, and the model has none among its targets")
    reference = {name: float(kernel_norms(effective(baseline, name)).float().std()) for name in targets}
    return KernelPruner(WEIGHT_METHODS.get(str(config.method)), targets, reference, config.seed), config


register(Granularity(
    name="kernel", doc="whole 2-D kernels of conv layers, zeroed by masks (weight methods on kernel norms)",
    methods=MASK_METHODS, default_method="magnitude", start=1.5, options=frozenset(), physical=False,
    continuous=True, prepare=_prepare_kernels, build=_build_kernel))


def _nm_granularity(match: re.Match[str]) -> Granularity:
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(f"n:m sparsity needs 0 < n < m, got {n}:{m}")

    def prepare(model: nn.Module, targets: tuple[str, ...]) -> nn.Module:
        return masked_copy(model, nm_order(model, targets, n, m))

    def build(baseline: nn.Module, config: PruneConfig, context: Context) -> tuple[NMPruner, PruneConfig]:
        order = nm_order(baseline, context.targets, n, m)
        if not order:
            raise ConfigError(f"no layer of the model has a multiple of {m} inputs; {n}:{m} sparsity cannot apply")
        method = WEIGHT_METHODS.get(str(config.method))
        return NMPruner(method, n, m, order, nm_sizes(baseline, order), config.seed), config

    return Granularity(
        name=f"{n}:{m}", doc=f"layers made {n}:{m} sparse", methods=MASK_METHODS, default_method="magnitude",
        start=1.0, options=frozenset(), physical=False, continuous=False, prepare=prepare, build=build)


GRANULARITIES.add_pattern(
    "n:m", r"(\d+):(\d+)", _nm_granularity, example="2:4",
    help="whole layers made N:M sparse (e.g. 2:4, for sparse tensor cores); strength = share of the parameters")
