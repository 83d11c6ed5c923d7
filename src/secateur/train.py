"""The reusable training loop: baseline training and the retraining between pruning rounds.

:func:`fit` trains any ``nn.Module`` on a :class:`~secateur.zoo.data.Dataset` (or your own
PyTorch data, as :class:`~secateur.zoo.loaders.Loaders`) with SGD (momentum,
L2 weight decay) or Adam/AdamW, an optional L1 penalty on the weights (``l1``), a per-step
learning-rate schedule, optional random-shift augmentation and a progress bar. Masked weights
(``secateur.unstructured.masks``) stay exactly zero through it: its fresh optimizer lets it trust the
masks (:func:`~secateur.unstructured.masks.trusted_masks`: gradients masked before each step instead
of weight x mask in every forward and backward).

A user's own training step plugs in through ``step``: a callable
``step(model, x, y) -> loss`` returning the scalar loss to minimise (the loop does the
backward pass, optimiser step and schedule). A user's whole loop plugs into the pruning API
instead, as ``train=callable(model)``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from secateur.arguments import check_field_types, expect_callable, expect_instance, expect_module, shown
from secateur.distributed import DataParallel, data_parallel
from secateur.errors import ConfigError
from secateur.io.schemas import INT64_MAX, MAX_EPOCHS, RECIPE_HINT, OptionsSchema
from secateur.progress import Advance, progress_bar
from secateur.registry import Registry
from secateur.unstructured.masks import prunable_names, trusted_masks
from secateur.zoo.data import Dataset
from secateur.zoo.loaders import Loaders, epoch_batches, split_batches, steps_per_epoch

StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
OPTIMIZERS: Registry[Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = Registry("optimizer")
LR_SCHEDULES: Registry[Callable[[float], float]] = Registry("learning-rate schedule")
AUTOCASTS: Registry[Callable[[torch.device], contextlib.AbstractContextManager]] = Registry("autocast")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # what ``device`` accepts (help and errors)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; stored verbatim in ``model.json``."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4  # the L2 penalty (in the optimiser, every trainable parameter)
    l1: float = 0.0  # L1 penalty: l1 x sum |w| over Linear / Conv weights added to the loss (see l1_norm)
    lr_schedule: str = "cosine"  # see LR_SCHEDULES
    augment: int = 0  # largest random shift in pixels (0 = none)
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N"
    autocast: str = "none"  # see AUTOCASTS: "bf16" runs the training steps in bfloat16 autocast

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` with one line for any impossible value (types first)."""
        TRAIN_OPTIONS.check_values(self)
        checks = [
            (0 <= self.epochs <= MAX_EPOCHS, f"epochs must be in [0, {MAX_EPOCHS}], got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"learning rate must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.l1 < math.inf, f"l1 (the L1 penalty) must be a finite number >= 0, got {self.l1}"),
            (self.augment >= 0, f"augment (pixels of shift) must be >= 0, got {self.augment}"),
            (0 <= self.label_smoothing < 1, "label smoothing must be in [0, 1)"),
            (0 <= self.seed <= INT64_MAX, f"seed must be in [0, 2**63), got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        OPTIMIZERS.get(self.optimizer)
        LR_SCHEDULES.get(self.lr_schedule)
        AUTOCASTS.get(self.autocast)
        resolve_device(self.device)
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (e.g. the lower retraining learning rate)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "the training recipe") -> TrainConfig:
        """A validated config from plain data (``model.json``'s ``train``, a recipe); keys and types
        are checked by :data:`TRAIN_OPTIONS` (unknown keys and strings for numbers are ConfigErrors)."""
        config = TRAIN_OPTIONS.parse(data, where, hint=RECIPE_HINT)
        try:
            return config.validate()
        except ConfigError as error:
            raise type(error)(f"{where}: {error}") from None

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)


TRAIN_OPTIONS: OptionsSchema[TrainConfig] = OptionsSchema(TrainConfig, renamed={"schedule": "lr_schedule"})
"""The schema of the training options (``model.json``'s ``train``, recipes), derived from the dataclass;
``schedule`` is the name ``lr_schedule`` had before secateur 0.1."""


class _FitState(TypedDict):
    """What :func:`fit` carries from epoch to epoch."""

    generator: torch.Generator
    device: torch.device
    optimizer: torch.optim.Optimizer
    step: int
    total: int


@dataclass(frozen=True)
class EpochLog:
    """What one epoch did: mean training loss, validation accuracy, learning rate, time."""

    epoch: int
    loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """The outcome of :func:`fit`: per-epoch history and wall time."""

    history: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy after the last epoch (nan if no epoch ran)."""
        return self.history[-1].val_accuracy if self.history else float("nan")


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    A device that is not there is a ConfigError phrased for the Python API (``device="cpu"``);
    the CLI checks its ``--device`` flag itself, with the flag in its message.
    """
    if isinstance(name, str) and name.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use one of {', '.join(DEVICES)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(name)!r} requested but no CUDA GPU is available; "
                          'use device="cpu" or device="auto"')
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(name)!r} requested but there are {torch.cuda.device_count()} CUDA GPUs; "
                          'use device="cuda:0" or device="auto"')
    return device


@AUTOCASTS.register("none")
def _full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Full precision (float32) throughout."""
    return contextlib.nullcontext()


@AUTOCASTS.register("bf16")
def _bf16(device: torch.device) -> contextlib.AbstractContextManager:
    """Training steps in bfloat16 autocast (CUDA or CPU); weights, optimiser and evaluation stay float32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def default_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model's logits: the loss every zoo model trains with."""
    return F.cross_entropy(model(x), y)


def smoothed_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy with label smoothing (``TrainConfig.label_smoothing``)."""
    return F.cross_entropy(model(x), y, label_smoothing=smoothing)


def distill_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, teacher: nn.Module,
                 weight: float, temperature: float) -> torch.Tensor:
    """Cross-entropy blended with the teacher's softened predictions (Hinton et al. 2015).

    ``weight`` is the share of the distillation term; it is scaled by ``temperature**2`` so
    its gradients keep their size as the temperature changes. Pruning retrains with the
    dense model as teacher: the pruned model then keeps the original's decisions (fewer
    examples flip either way), which is what an accuracy *drop* bound measures.
    """
    logits = model(x)
    with torch.no_grad():
        target = F.softmax(teacher(x) / temperature, dim=1)
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), target, reduction="batchmean")
    return (1.0 - weight) * F.cross_entropy(logits, y) + weight * temperature ** 2 * soft


def l1_norm(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over the weights of ``model``'s Linear / Conv layers (masked: their surviving entries),
    each tied weight once; biases and norm layers are left out. ``TrainConfig.l1`` scales it into the loss."""
    terms = [getattr(model.get_submodule(prefix), attr).abs().sum()
             for prefix, _, attr in (name.rpartition(".") for name in prunable_names(model))]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def l1_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: StepFn, l1: float) -> torch.Tensor:
    """``step``'s loss plus ``l1`` x :func:`l1_norm` (Han et al.'s L1 regularisation)."""
    return step(model, x, y) + l1 * l1_norm(model)


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with gradients off, to distil from."""
    teacher = copy.deepcopy(model).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@OPTIMIZERS.register("sgd")
def _sgd(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum and L2 weight decay."""
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.momentum > 0)


@OPTIMIZERS.register("adam")
def _adam(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam with L2 weight decay."""
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named in ``config``; weight decay applies to every trainable parameter."""
    return OPTIMIZERS.get(config.optimizer)([p for p in model.parameters() if p.requires_grad], config)


@LR_SCHEDULES.register("cosine")
def _cosine(progress: float) -> float:
    """Cosine annealing to zero."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@LR_SCHEDULES.register("step")
def _step(progress: float) -> float:
    """x0.1 at half and at three quarters of the run."""
    return 0.1 ** (int(progress >= 0.5) + int(progress >= 0.75))


@LR_SCHEDULES.register("linear")
def _linear(progress: float) -> float:
    """Linear decay to zero (Sparse VD's schedule)."""
    return 1.0 - progress


@LR_SCHEDULES.register("constant")
def _constant(progress: float) -> float:
    """The base learning rate throughout."""
    return 1.0


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` optimiser steps."""
    return 1.0 if total <= 0 else LR_SCHEDULES.get(schedule)(step / total)


def random_shift(x: torch.Tensor, pixels: int, background: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``pixels`` in x and y, filling with ``background``."""
    if pixels <= 0:
        return x
    b, c, h, w = x.shape
    padded = background.view(1, c, 1, 1).expand(b, c, h + 2 * pixels, w + 2 * pixels).clone()
    padded[:, :, pixels:pixels + h, pixels:pixels + w] = x
    offsets = torch.randint(0, 2 * pixels + 1, (2, b), generator=generator).to(x.device)
    rows = offsets[0].view(b, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    cols = offsets[1].view(b, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _check_model_data(model: object, data: object) -> None:
    """One-line ConfigErrors for a model that is not an nn.Module or data that is not a Dataset / Loaders."""
    expect_module(model)
    if not isinstance(data, (Dataset, Loaders)):
        hint = " (load it with secateur.load_dataset)" if isinstance(data, str) else ""
        raise ConfigError(f"data must be a secateur Dataset{hint}, got {shown(data)}; for your own DataLoaders "
                          "or torch Datasets pass secateur.Loaders(train=..., val=...)")


def _check_fit(model: object, data: object, config: object, step: object, on_epoch: object) -> None:
    """:func:`fit`'s arguments of the wrong kind, before any work starts."""
    _check_model_data(model, data)
    expect_instance(config, TrainConfig, "config", "a TrainConfig")
    if config is not None:
        check_field_types(TrainConfig, vars(config), "training option")
    expect_callable(step, "step", "(model, x, y) and returning the loss")
    expect_callable(on_epoch, "on_epoch", "an EpochLog")


def _check_evaluate(model: object, data: object, split: object, batch_size: object) -> None:
    """:func:`evaluate` / :func:`correctness`'s arguments of the wrong kind."""
    _check_model_data(model, data)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")


def check_shift(pixels: int, data: Dataset | Loaders) -> None:
    """ConfigError unless a random shift of ``pixels`` is smaller than the images of ``data``."""
    if isinstance(data, Loaders):
        if pixels:
            raise ConfigError(f"augment={pixels} shifts secateur's own datasets only; with secateur.Loaders "
                              "augment in your dataset's transforms and set augment=0")
        return
    height, width = data.train.images.shape[-2:]
    if pixels >= min(height, width):
        raise ConfigError(f"augment (pixels of shift) must be smaller than the {height}x{width} images of "
                          f"{data.name}, got {pixels}; use a shift below {min(height, width)}")


@torch.no_grad()
def correctness(model: nn.Module, data: Dataset | Loaders, split: str = "val", *, batch_size: int = 1000,
                device: str | torch.device | None = None) -> torch.Tensor:
    """Whether ``model`` classifies each example of ``data.<split>`` right (bool, on the CPU).

    Per-example results let two models be compared on the same images (paired), which the
    pruning search's acceptance rule needs (:mod:`secateur.search.acceptance`).
    """
    _check_evaluate(model, data, split, batch_size)
    if isinstance(device, str):
        device = resolve_device(device)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    hits = [(model(x).argmax(dim=1) == y).cpu()
            for x, y in split_batches(data, split, batch_size, device)]
    model.train(was_training)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def evaluate(model: nn.Module, data: Dataset | Loaders, split: str = "val", *, batch_size: int = 1000,
             device: str | torch.device | None = None) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``data.<split>``.

    Runs where the model's parameters are unless ``device`` says otherwise.
    """
    hits = correctness(model, data, split, batch_size=batch_size, device=device)
    return int(hits.sum()) / max(hits.numel(), 1)


def _epoch_batches(data: Dataset | Loaders, config: TrainConfig, generator: torch.Generator,
                   device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled, augmented pass over the training split (your Loaders: as they come)."""
    if isinstance(data, Loaders):
        yield from epoch_batches(data, config.batch_size, generator, device)
        return
    background = ((0.0 - torch.tensor(data.mean)) / torch.tensor(data.std)).to(device)
    for x, y in epoch_batches(data, config.batch_size, generator, device):
        yield random_shift(x, config.augment, background, generator), y


def _train_epoch(model: nn.Module, data: Dataset | Loaders, config: TrainConfig, state: _FitState,
                 step: StepFn, advance: Advance) -> float:
    """Run one epoch of optimiser steps; returns the mean training loss."""
    model.train()
    loss_sum, seen = 0.0, 0
    optimizer = state["optimizer"]
    for x, y in _epoch_batches(data, config, state["generator"], state["device"]):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(config.lr_schedule, state["step"], state["total"])
        optimizer.zero_grad(set_to_none=True)
        with AUTOCASTS.get(config.autocast)(state["device"]):
            loss = step(model, x, y)
        loss.backward()
        optimizer.step()
        state["step"] += 1
        loss_sum += float(loss.detach()) * len(y)
        seen += len(y)
        advance(status=f"loss {loss_sum / seen:.4f}")
    return loss_sum / max(seen, 1)


def _data_parallel(distributed: bool | None, model: nn.Module, device: torch.device, seed: int,
                   data: Dataset | Loaders) -> DataParallel | None:
    """The data-parallel wrapper of :func:`fit` (None: this process alone); it shards secateur Datasets only."""
    parallel = data_parallel(distributed, model, device, seed)
    if parallel is not None and not isinstance(data, Dataset):
        raise ConfigError("data-parallel training (torchrun, distributed=) takes a secateur Dataset; your own "
                          "Loaders would need a DistributedSampler: pass distributed=False, or a secateur Dataset")
    return parallel


def _fit_epoch(model: nn.Module, data: Dataset | Loaders, config: TrainConfig, state: _FitState, step: StepFn,
               advance: Advance, parallel: DataParallel | None, epoch: int) -> float:
    """One epoch of :func:`fit`; data-parallel: this rank's shard and share of the batch, then rank
    0's buffers and the mean loss."""
    if parallel is None or not isinstance(data, Dataset):
        return _train_epoch(model, data, config, state, step, advance)
    shard, share = parallel.epoch_data(data, epoch), parallel.share(config)
    return parallel.end_epoch(_train_epoch(parallel.module, shard, share, state, step, advance))


def fit(model: nn.Module, data: Dataset | Loaders, config: TrainConfig | None = None, *,
        step: StepFn | None = None, progress: bool = True,
        on_epoch: Callable[[EpochLog], None] | None = None, distributed: bool | None = None) -> TrainResult:
    """Train ``model`` in place on ``data.train``, validating on ``data.val`` after each epoch.

    ``data`` is a secateur Dataset or :class:`~secateur.zoo.loaders.Loaders` (your DataLoaders
    or torch Datasets; a train DataLoader keeps its own batch size and order).

    The same ``config.seed`` gives bitwise the same weights on CPU (shuffling, augmentation
    and dropout all draw from seeded generators). ``config.device`` says where (``"auto"``:
    CUDA when present); the model is moved there and stays there. ``distributed`` (None: when a
    process group of several ranks is initialised, as under ``torchrun``) trains data-parallel
    (:class:`secateur.distributed.DataParallel`): each rank on its shard of ``data.train``, the
    batch split over the ranks, gradients all-reduced; ``step`` then receives the DDP-wrapped model.
    Data-parallel training takes a secateur Dataset (your Loaders would need a DistributedSampler).
    """
    _check_fit(model, data, config, step, on_epoch)
    config = (config or TrainConfig()).validate()
    check_shift(config.augment, data)
    device = resolve_device(config.device)
    model.to(device)
    parallel = _data_parallel(distributed, model, device, config.seed, data)
    seed = parallel.rank_seed(config.seed) if parallel else config.seed
    torch.manual_seed(seed)  # dropout and any other global-RNG use inside the model
    steps = (parallel.steps_per_epoch(len(data.train), config.batch_size)
             if parallel and isinstance(data, Dataset) else steps_per_epoch(data, config.batch_size))
    state: _FitState = {
        "generator": torch.Generator().manual_seed(seed), "device": device,
        "optimizer": make_optimizer(model, config), "step": 0,
        "total": steps * config.epochs,
    }
    if step is None and config.label_smoothing > 0:
        step = functools.partial(smoothed_step, smoothing=config.label_smoothing)
    if config.l1 > 0:
        step = functools.partial(l1_step, step=step or default_step, l1=config.l1)
    result, start = TrainResult(), time.perf_counter()
    with progress_bar(progress, state["total"], "training") as advance, trusted_masks(model, state["optimizer"]):
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            advance(0, description=f"epoch {epoch}/{config.epochs}")
            loss = _fit_epoch(model, data, config, state, step or default_step, advance, parallel, epoch)
            val_acc = evaluate(model, data, "val", device=device)
            log = EpochLog(epoch, loss, val_acc, state["optimizer"].param_groups[0]["lr"],
                           time.perf_counter() - epoch_start)
            result.history.append(log)
            advance(0, status=f"loss {loss:.4f}  val {100 * val_acc:.2f}%")
            if on_epoch is not None:
                on_epoch(log)
    result.seconds = time.perf_counter() - start
    return result
