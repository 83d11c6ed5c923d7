"""``timm:<name>``: any model of the timm library (``pip install timm``) by name, as a zoo model.

Registered as a pattern family of :data:`~secateur.zoo.models.MODELS`, so ``--model
timm:convnext_atto``, ``model: timm:convnext_atto`` in a recipe and
``build_model("timm:convnext_atto")`` resolve alike. Models are built with
``pretrained=False`` (secateur never downloads weights), ``num_classes`` from the dataset and
``in_chans`` from the input shape; their natural inputs are the model's default configuration
(usually ImageNet's 3x224x224 and 1000 classes). timm is imported only when such a model is
built, and a missing timm is one line saying how to install it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from secateur.errors import ConfigError, UnknownNameError
from secateur.zoo.models import IMAGENET, MODELS

PREFIX = "timm:"
RESERVED = ("pretrained", "num_classes", "in_chans", "pretrained_cfg_overlay", "checkpoint_path")
INSTALL = "pip install 'timm>=1.0,<2'"


def _timm() -> Any:
    """The timm module (imported by name: type checking need not read all of timm)."""
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise ConfigError(f"timm: models need the timm package; install it ({INSTALL})") from None
    return timm


@dataclass(frozen=True)
class TimmFactory:
    """Builds timm's ``arch`` for an input shape and number of classes, randomly initialised."""

    arch: str

    def __call__(self, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
        timm = _timm()
        if not timm.is_model(self.arch):
            raise UnknownNameError(f"unknown timm model {self.arch!r}; see timm.list_models() for the names")
        reserved = sorted(set(kwargs) & set(RESERVED))
        if reserved:
            raise ConfigError(f"{PREFIX}{self.arch} takes no {', '.join(reserved)} argument; secateur sets it "
                              "(pretrained=False, num_classes from the dataset, in_chans from the input shape)")
        try:
            model: nn.Module = timm.create_model(self.arch, pretrained=False, num_classes=num_classes,
                                                 in_chans=int(input_shape[0]), **kwargs)
        except (TypeError, ValueError, AssertionError) as err:
            raise ConfigError(f"cannot build {PREFIX}{self.arch}: {_first_line(err)}") from None
        return model

    def natural(self) -> tuple[tuple[int, ...], int]:
        """The model's default input shape and classes (timm's configuration; ImageNet's without one)."""
        timm = _timm()
        cfg = timm.models.get_pretrained_cfg(self.arch) if timm.is_model(self.arch) else None
        shape = tuple(getattr(cfg, "input_size", None) or IMAGENET[0])
        classes = int(getattr(cfg, "num_classes", None) or IMAGENET[1])
        return shape, classes


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _from_match(match: re.Match[str]) -> TimmFactory:
    return TimmFactory(match.group("arch").strip())


MODELS.add_pattern("timm:<name>", r"timm:(?P<arch>[A-Za-z0-9_.\-]+)", _from_match, example="timm:resnet18",
                   help="any timm model by name, randomly initialised (needs timm; never downloads weights)")
