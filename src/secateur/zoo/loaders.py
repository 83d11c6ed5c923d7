"""Your own PyTorch data in ``fit``, ``evaluate`` and ``prune``: :class:`Loaders`, and batches of either kind.

``data=`` takes a secateur :class:`~secateur.zoo.data.Dataset` (``load_dataset``) or a
:class:`Loaders`: your ``torch.utils.data`` ``DataLoader``\\ s, or map-style ``Dataset``\\ s, for
the train and validation splits (and optionally test), each yielding ``(x, y)``:

* a ``DataLoader`` is used as it is (its batch size, sampler, workers and transforms);
* a plain ``Dataset`` is wrapped in a ``DataLoader`` whose batch size is the
  ``TrainConfig``'s (training) or the evaluation's, shuffled for training from the training
  seed (so a seed gives the same order), in order for evaluation.

The validation split must come in the same order every call: the search compares two models
example by example (the paired noise margin of :mod:`secateur.search.acceptance`), so a
validation ``DataLoader`` that shuffles is refused.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler
from torch.utils.data import Dataset as TorchDataset

from secateur.arguments import shown
from secateur.errors import ConfigError
from secateur.zoo.data import Dataset, batches

Batch = tuple[torch.Tensor, torch.Tensor]
SPLITS = ("train", "val", "test")
CUSTOM = "custom"  # the dataset name of a run on Loaders without a name


@dataclass(frozen=True)
class Loaders:
    """Your own train / validation (/ test) data: ``DataLoader``\\ s or map-style torch ``Dataset``\\ s.

    ``num_classes`` and ``name`` are recorded with the run (``name`` titles the report;
    default ``"custom"``). Example: ``Loaders(train=DataLoader(ds, 64, shuffle=True), val=val_ds)``.
    """

    train: DataLoader | TorchDataset
    val: DataLoader | TorchDataset
    test: DataLoader | TorchDataset | None = None
    num_classes: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        for part in SPLITS:
            value = getattr(self, part)
            if value is None and part == "test":
                continue
            if not isinstance(value, (DataLoader, TorchDataset)):
                raise ConfigError(f"Loaders {part}= must be a torch.utils.data DataLoader or map-style Dataset "
                                  f"yielding (x, y), got {shown(value)}")
        if _shuffles(self.val):
            raise ConfigError("Loaders val= shuffles: the search compares models example by example, so the "
                              "validation examples must come in the same order every call; use shuffle=False")
        if self.num_classes is not None and (isinstance(self.num_classes, bool)
                                             or not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ConfigError(f"Loaders num_classes= must be a positive int (or None), got {shown(self.num_classes)}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ConfigError(f"Loaders name= must be a non-empty string (or None), got {shown(self.name)}")

    @functools.cached_property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input (no batch dimension), from the first validation example."""
        source = self.val
        if isinstance(source, DataLoader):
            x, _ = _pair(next(iter(source)), "val")
            return tuple(int(d) for d in x.shape[1:])
        x, _ = _pair(_first(source), "val")
        return tuple(int(d) for d in torch.as_tensor(x).shape)

    @property
    def label(self) -> str:
        """The name recorded for the run: ``name``, else ``"custom"``."""
        return self.name.strip() if self.name else CUSTOM


def _first(source: TorchDataset) -> Any:
    """The first item of a map-style or iterable dataset."""
    if isinstance(source, IterableDataset):
        return next(iter(source))
    return source[0]


def _shuffles(source: object) -> bool:
    """Whether a DataLoader draws a random order (its sampler, or its batch sampler's)."""
    if not isinstance(source, DataLoader):
        return False
    batch_sampler = getattr(source, "batch_sampler", None)
    samplers = (source.sampler, getattr(batch_sampler, "sampler", None))
    return any(isinstance(s, RandomSampler) for s in samplers)


def _pair(batch: object, part: str) -> Batch:
    """``(x, y)`` of one batch or item; a one-line error for anything else."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ConfigError(f"the {part} data must yield (x, y) pairs, got {shown(batch)}")
    x, y = batch
    return x, y


def _loader(source: DataLoader | TorchDataset, batch_size: int, generator: torch.Generator | None) -> DataLoader:
    """``source`` if it is a DataLoader, else one over it (shuffled from ``generator`` when given)."""
    if isinstance(source, DataLoader):
        return source
    shuffle = generator is not None and not isinstance(source, IterableDataset)
    return DataLoader(source, batch_size=batch_size, shuffle=shuffle, generator=generator if shuffle else None)


def _moved(batches_: Iterable[object], part: str, device: str | torch.device) -> Iterator[Batch]:
    for batch in batches_:
        x, y = _pair(batch, part)
        yield torch.as_tensor(x).to(device), torch.as_tensor(y).to(device)


def _source(data: Loaders, split: str) -> DataLoader | TorchDataset:
    source = getattr(data, split)
    if source is None:
        raise ConfigError(f"the Loaders have no {split} data; pass {split}= to secateur.Loaders")
    return source


# ----------------------------------------------------------------------------- either kind of data


def split_batches(data: Dataset | Loaders, split: str, batch_size: int,
                  device: str | torch.device = "cpu") -> Iterator[Batch]:
    """The batches of ``split`` in a fixed order, on ``device`` (normalised, for a secateur Dataset)."""
    if isinstance(data, Dataset):
        return batches(getattr(data, split), batch_size, mean=data.mean, std=data.std, device=device)
    return _moved(_loader(_source(data, split), batch_size, None), split, device)


def epoch_batches(data: Dataset | Loaders, batch_size: int, generator: torch.Generator,
                  device: str | torch.device = "cpu") -> Iterator[Batch]:
    """One training epoch's batches, shuffled from ``generator`` (a train DataLoader keeps its own order)."""
    if isinstance(data, Dataset):
        return batches(data.train, batch_size, mean=data.mean, std=data.std, shuffle=True, generator=generator,
                       device=device)
    return _moved(_loader(data.train, batch_size, generator), "train", device)


def steps_per_epoch(data: Dataset | Loaders, batch_size: int) -> int:
    """Optimiser steps in one training epoch."""
    if isinstance(data, Dataset):
        return math.ceil(len(data.train) / batch_size)
    try:
        return len(_loader(data.train, batch_size, torch.Generator()))
    except TypeError:  # an iterable dataset without a length
        raise ConfigError("the train data has no len(), which the learning-rate schedule needs; give it "
                          "__len__ or pass a map-style Dataset") from None


def a_few_batches(data: Dataset | Loaders, count: int = 4, batch_size: int = 128) -> Iterator[Batch]:
    """The first ``count`` training batches (for methods that need gradients, e.g. taylor)."""
    return itertools.islice(split_batches(data, "train", batch_size), count)


def dataset_name(data: Dataset | Loaders) -> str:
    """The name a run records for its data."""
    return data.name if isinstance(data, Dataset) else data.label


def has_split(data: Dataset | Loaders, split: str) -> bool:
    """Whether ``data`` holds ``split`` (a Loaders' test is optional)."""
    return isinstance(data, Dataset) or getattr(data, split) is not None
