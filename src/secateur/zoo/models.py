"""The model zoo, torchvision models and user factories, all resolved by one name.

A model name is one of:

* a zoo name (``lenet300``, ``lenet5``, ``alexnet-mnist``, ``vgg-mnist``, ``resnet-mnist``, ``vit-mnist``);
* ``timm:<name>``: any timm model (:mod:`secateur.zoo.timm_models`, a pattern family of ``MODELS``);
* ``torchvision:<name>``: any torchvision classification model, built with ``weights=None``
  (secateur never downloads weights); for images of other than 3 channels its first
  convolution is rebuilt for them (``in_channels`` in its record);
* ``package.module:factory``: a user's function that returns an ``nn.Module``.

Without ``input_shape`` / ``num_classes`` a model is built for its natural inputs
(:func:`natural_defaults`): ImageNet's 3x224x224 and 1000 classes for torchvision models,
MNIST's 1x28x28 and 10 classes otherwise. ``weights=`` (``--weights``) loads a local
safetensors state dict into the built model (:func:`load_weights`; no pickle).

Zoo models use readable, stable module names (``fc1``, ``conv1``, ``features.conv3``,
``layer2.0.downsample.0`` ...) because pruning levels, masks and reports are keyed by them.
Every pruned layer is an ``nn.Linear`` or ``nn.Conv2d``; every module is used once per
forward, and residual adds are written ``out = out + identity`` so structured pruning can
trace them. Initialisation uses PyTorch's defaults, so it is deterministic under
``torch.manual_seed``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from secateur.errors import ConfigError, UnknownNameError
from secateur.provenance import Factory, record_model, recorded_model
from secateur.registry import Registry
from secateur.unstructured.masks import effective_state_dict

MODELS: Registry[Factory] = Registry("model", builtins=("secateur.zoo.timm_models",))  # + timm:<name>

TORCHVISION_PREFIX = "torchvision:"
IMAGENET = ((3, 224, 224), 1000)  # torchvision models' natural input shape and classes
MNIST = ((1, 28, 28), 10)  # every other model's
TORCHVISION_CHANNELS = 3  # torchvision's stems take RGB images


# --------------------------------------------------------------------------- public API


def build_model(name: str, *, input_shape: Sequence[int] | None = None, num_classes: int | None = None,
                weights: str | os.PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Build the model called ``name`` for inputs of ``input_shape`` (C, H, W) and ``num_classes``.

    Left out, both are the model's natural ones (:func:`natural_defaults`). Extra keyword
    arguments go to the zoo factory, to torchvision's ``get_model`` or to the user's factory.
    ``weights`` is a local ``.safetensors`` state dict loaded into the built model
    (:func:`load_weights`). Unknown names raise :class:`UnknownNameError` listing the choices.
    The model carries its :func:`model_record` (when the arguments are JSON values), so
    ``secateur.save_model(model, path)`` writes a checkpoint that rebuilds it by itself.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}; see `secateur list`")
    natural_shape, natural_classes = natural_defaults(name)
    shape = _check_input_shape(natural_shape if input_shape is None else input_shape)
    classes = _check_num_classes(natural_classes if num_classes is None else num_classes)
    model = _build(name.strip(), shape, classes, kwargs)
    try:
        record = model_record(name, shape, classes, **kwargs)
    except ConfigError:  # arguments that are not JSON values: the model cannot rebuild itself
        record = None
    if weights is not None:
        load_weights(model, weights)
    return record_model(model, record)


def natural_defaults(name: str) -> tuple[tuple[int, ...], int]:
    """The (input shape, classes) ``name`` is built for when none are given: ImageNet's
    (3x224x224, 1000) for ``torchvision:<name>``, what a registered factory's ``natural()``
    says (``timm:<name>``: timm's default configuration), MNIST's (1x28x28, 10) otherwise."""
    if _is_torchvision(name):
        return IMAGENET
    natural = getattr(_registered(name), "natural", None)
    return natural() if callable(natural) else MNIST


def _registered(name: object) -> Factory | None:
    """The factory ``MODELS`` resolves ``name`` to (a zoo name or a pattern family's member), or None."""
    try:
        return MODELS.get(name.strip()) if isinstance(name, str) else None
    except UnknownNameError:
        return None


def _is_torchvision(name: object) -> bool:
    return isinstance(name, str) and name.strip().lower().startswith(TORCHVISION_PREFIX)


def rebuild_args(record: Mapping[str, Any]) -> dict:
    """The :func:`build_model` keyword arguments of a saved model record.

    A torchvision record written before records carried ``in_channels`` was built with its
    3-channel stem whatever its ``input_shape``; it rebuilds so.
    """
    args = dict(record.get("args") or {})
    if _is_torchvision(record.get("name")) and "in_channels" not in args:
        args["in_channels"] = TORCHVISION_CHANNELS
    return args


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the safetensors state dict at ``path`` into ``model`` (strict; no pickle, no torch.load).

    Keys and shapes must match the model's ``state_dict`` exactly; otherwise a ConfigError
    names the first few that do not. Returns ``model``.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"weights file {str(path)!r} not found; weights= (--weights) takes a local .safetensors "
                          "state dict (secateur never downloads weights)")
    try:
        state = safetensors.torch.load(file.read_bytes())
    except Exception as err:  # safetensors raises its own error types for bad headers / sizes
        raise ConfigError(f"{file} is not a safetensors file ({_first_line(err)}); save the state dict with "
                          "safetensors.torch.save_file(model.state_dict(), path)") from None
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        raise ConfigError(f"{file} does not fit the model: {problem}; give the weights of this architecture "
                          "(same input shape and classes)")
    model.load_state_dict(state, strict=True)
    return model


def _state_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """How ``given`` fails to fit ``expected`` (missing, unexpected, wrong shape: first three of each), or ''."""
    missing = [k for k in expected if k not in given]
    unexpected = sorted(k for k in given if k not in expected)
    shapes = [f"{k} {tuple(given[k].shape)} (model: {tuple(expected[k].shape)})"
              for k in expected if k in given and expected[k].shape != given[k].shape]
    parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
    return "; ".join(parts)


def _build(name: str, shape: tuple[int, ...], classes: int, kwargs: dict) -> nn.Module:
    """Resolve ``name`` (torchvision, user factory or zoo) and build it."""
    if _is_torchvision(name):
        return _build_torchvision(name[len(TORCHVISION_PREFIX):], shape, classes, kwargs)
    factory = _registered(name)
    if factory is None and ":" in name:
        return _build_user(name, shape, classes, kwargs)
    if factory is None:
        choices = ", ".join(MODELS.names())
        raise UnknownNameError(f"unknown model {name!r}; choose one of: {choices}; or torchvision:<name>, "
                               "or package.module:factory")
    _check_kwargs(name, factory, kwargs, skip=("input_shape", "num_classes"))
    try:
        return factory(input_shape=shape, num_classes=classes, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # e.g. dropout=1.5, widths="x"
        raise ConfigError(f"bad arguments {kwargs!r} for model {name!r}: {_first_line(err)}") from None


def model_names() -> list[str]:
    """Zoo names plus the two open-ended forms, for ``--help`` and error messages."""
    return [*MODELS.names(), "torchvision:<name>", "package.module:factory"]


def model_record(name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> dict:
    """A JSON-serialisable ``{"name": ..., "args": {...}}`` that rebuilds the model.

    ``build_model(record["name"], **record["args"])`` rebuilds the same architecture; this is
    what checkpoints store under ``"model"`` in ``model.json``.
    """
    shape = _check_input_shape(input_shape)
    args = {"input_shape": list(shape), "num_classes": _check_num_classes(num_classes), **kwargs}
    if _is_torchvision(name):  # always recorded: an older record without it had a 3-channel stem
        args.setdefault("in_channels", shape[0])
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        raise ConfigError(f"model arguments for {name!r} must be JSON values (numbers, strings, "
                          f"lists, dicts), got {kwargs!r}") from None
    return {"name": str(name).strip(), "args": args}


def rebuild_record(model: nn.Module, input_shape: Sequence[int] | None = None,
                   num_classes: int | None = None) -> dict | None:
    """A model record that rebuilds ``model``'s architecture, or None if none is known to.

    The record ``build_model`` left on the model, else, for your own ``nn.Module`` class,
    ``{"name": "package.module:Class", "args": {...}}`` (the user-factory form ``build_model``
    takes), kept only when the class is importable at module level and ``build_model`` of that
    record gives the same tensors (names and shapes) as ``model``; so a record never rebuilds
    another architecture. Classes of a script run as ``__main__`` are not importable elsewhere.
    """
    recorded = recorded_model(model)
    if recorded is not None:
        return recorded
    cls = type(model)
    if cls.__module__ in ("__main__", "builtins") or "<locals>" in cls.__qualname__:
        return None
    module = sys.modules.get(cls.__module__)
    found: Any = module
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is not cls:
        return None
    args: dict[str, Any] = {"input_shape": list(input_shape)} if input_shape else {}
    if num_classes is not None:
        args["num_classes"] = num_classes
    record = {"name": f"{cls.__module__}:{cls.__qualname__}", "args": args}
    return record if _rebuilds(record, model) else None


def _rebuilds(record: dict, model: nn.Module) -> bool:
    """Whether ``build_model`` of ``record`` gives ``model``'s tensors (names and shapes)."""
    try:
        with torch.random.fork_rng(devices=[]):  # the trial build leaves the caller's random state alone
            rebuilt = build_model(record["name"], **record["args"])
    except Exception:  # any failure of the user's constructor means: not rebuildable this way
        return False
    want = {k: tuple(v.shape) for k, v in effective_state_dict(model).items()}
    return want == {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}


# --------------------------------------------------------------------------- validation


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints (one sample, no batch dimension)."""
    try:
        shape = tuple(int(d) for d in input_shape)
        ok = len(shape) > 0 and all(d > 0 and d == float(s) for d, s in zip(shape, input_shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"input_shape must be positive integers like 1,28,28 (C,H,W), got {input_shape!r}")
    return shape


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _check_kwargs(label: str, factory: Callable, kwargs: dict, skip: Sequence[str] = ()) -> None:
    """Raise one-line :class:`ConfigError` if ``factory`` cannot take ``kwargs``."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n not in skip
                and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"model {label!r} does not accept {', '.join(unknown)}; "
                          f"it accepts: {', '.join(accepted) or 'no extra arguments'}")


def _conv_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    """A (C, H, W) input shape for a convolutional zoo model."""
    if len(input_shape) != 3:
        raise ConfigError(f"{model} needs input_shape C,H,W (3 numbers), got {','.join(map(str, input_shape))}")
    return input_shape  # narrowed to three ints by the length check


def _flat_size(features: nn.Module, input_shape: tuple[int, ...], model: str) -> int:
    """Features per sample after ``features`` for one zero input (the classifier's fan-in)."""
    try:
        with torch.no_grad():
            out = features.eval()(torch.zeros(1, *input_shape))
    except RuntimeError:
        raise ConfigError(f"input_shape {','.join(map(str, input_shape))} is too small for {model}; "
                          f"use larger images (it was designed for 1,28,28)") from None
    features.train()
    return int(out[0].numel())


# --------------------------------------------------------------------------- torchvision + user factories


def _build_torchvision(arch: str, shape: tuple[int, ...], num_classes: int, kwargs: dict) -> nn.Module:
    """A torchvision classification model with random init (``weights=None``, never downloads).

    ``in_channels`` (default: ``shape``'s first) other than 3 rebuilds the first convolution
    for that many channels; inputs other than 3x224x224 are checked with one zero forward
    (a one-line error for images too small for the architecture).
    """
    import torchvision  # lazy: about 2 s to import, and only torchvision:<name> models need it

    choices = torchvision.models.list_models(module=torchvision.models)
    if arch.lower() not in choices:
        raise UnknownNameError(f"unknown torchvision model {arch!r}; choose one of: {', '.join(choices)}")
    for reserved in ("weights", "num_classes"):
        if reserved in kwargs:
            raise ConfigError(f"torchvision:{arch} takes no {reserved!r} argument; secateur sets it "
                              f"(weights=None, num_classes from the dataset)")
    options = dict(kwargs)
    channels = options.pop("in_channels", shape[0])
    try:
        model = torchvision.models.get_model(arch.lower(), weights=None, num_classes=num_classes, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot build torchvision:{arch}: {_first_line(err)}") from None
    if channels != TORCHVISION_CHANNELS:
        _rebuild_stem(model, channels, arch)
    if shape != IMAGENET[0] and shape[0] == channels:  # (a record older than in_channels may differ)
        _check_forward(model, shape, f"torchvision:{arch}")
    return model


def _rebuild_stem(model: nn.Module, channels: int, arch: str) -> None:
    """Replace the first 3-channel convolution by one of the same kind for ``channels`` inputs."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {channels!r}")
    for path, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == TORCHVISION_CHANNELS and conv.groups == 1:
            same: dict[str, Any] = {"kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
                                    "dilation": conv.dilation, "padding_mode": conv.padding_mode}
            stem = nn.Conv2d(channels, conv.out_channels, bias=conv.bias is not None, **same)
            parent, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent), attr, stem)
            return
    raise ConfigError(f"torchvision:{arch} has no 3-channel convolution to rebuild for {channels}-channel images; "
                      "give 3-channel inputs")


def _check_forward(model: nn.Module, shape: tuple[int, ...], label: str) -> None:
    """One eval-mode zero forward of ``shape``: inputs the model cannot take are one line here."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    except RuntimeError as err:
        raise ConfigError(f"{label} cannot take inputs of shape {','.join(map(str, shape))} "
                          f"({_first_line(err)[:120]}); use larger images") from None
    finally:
        model.train(was_training)


def _build_user(spec: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict) -> nn.Module:
    """Call a user's ``package.module:factory``, passing what its signature accepts."""
    factory = _import_factory(spec)
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: just call them
        signature = None
    params = signature.parameters if signature is not None else {}
    call = dict(kwargs)
    if "num_classes" in params:
        call["num_classes"] = num_classes
    if "input_shape" in params:
        call["input_shape"] = input_shape
    if signature is not None:
        try:
            signature.bind(**call)
        except TypeError as err:
            raise ConfigError(f"cannot call {spec} with {sorted(call) or 'no arguments'}: "
                              f"{_first_line(err)}") from None
    model = factory(**call)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module; "
                          f"make the factory return the model")
    return model


def _import_factory(spec: str) -> Callable[..., Any]:
    """Resolve ``package.module:factory`` to a callable (the working folder is importable too)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ConfigError(f"model {spec!r} is not of the form package.module:factory")
    module = _import_module(module_name, spec)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{module_name} has no attribute {attr!r}; check the name after ':' in {spec!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{spec} is a {type(obj).__name__}, not a callable model factory")
    return obj


def _import_module(module_name: str, spec: str) -> Any:
    """Import ``module_name``; if it is not found, retry with the working folder on sys.path."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        cwd = os.getcwd()
        missing_top = err.name == module_name.split(".")[0]
        if not (missing_top and cwd not in sys.path):
            raise ConfigError(f"cannot import {module_name!r} for model {spec!r}: {_first_line(err)}") from None
        sys.path.append(cwd)
        return _import_module(module_name, spec)
    except Exception as err:  # any failure inside the user's module is a config problem
        raise ConfigError(f"importing {module_name!r} for model {spec!r} failed: "
                          f"{type(err).__name__}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------- the zoo


@MODELS.register("lenet300", help="LeNet-300-100: fully connected 784-300-100-10 with ReLU (266,610 params)")
def lenet300(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """LeNet-300-100 (Han et al. 2015): the flattened input, then fc1 300, fc2 100, fc3 classes."""
    in_features = math.prod(input_shape)
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(in_features, 300)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(300, 100)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(100, num_classes)),
    ]))


@MODELS.register("lenet5", help="Caffe LeNet-5: conv 20, conv 50, fc 500, fc 10 (431,080 params)")
def lenet5(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """Caffe's LeNet-5 as pruned by Han et al. 2015.

    conv1 20@5x5, max-pool 2, conv2 50@5x5, max-pool 2, fc1 500 + ReLU, fc2. As in Caffe's
    ``lenet_train_test.prototxt`` the convolutions have no ReLU (max-pooling is the only
    non-linearity there), so parameter counts and behaviour match the paper's network.
    """
    shape = _conv_shape(tuple(input_shape), "lenet5")
    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(shape[0], 20, 5)), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(20, 50, 5)), ("pool2", nn.MaxPool2d(2)),
    ]))
    flat = _flat_size(features, shape, "lenet5")
    return nn.Sequential(OrderedDict([
        *features.named_children(),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(flat, 500)), ("relu", nn.ReLU()),
        ("fc2", nn.Linear(500, num_classes)),
    ]))


@MODELS.register("alexnet-mnist", help="AlexNet-style: 5 conv + 3 fc with ReLU, max-pool, dropout (0.47M params)")
def alexnet_mnist(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                  dropout: float = 0.5) -> nn.Module:
    """AlexNet's layout (5 conv, 3 pools, 3 fc with dropout) scaled down to 28x28 inputs."""
    shape = _conv_shape(tuple(input_shape), "alexnet-mnist")
    layers: list[tuple[str, nn.Module]] = []
    plan = [(shape[0], 24, 5, True), (24, 48, 3, True), (48, 64, 3, False), (64, 64, 3, False), (64, 48, 3, True)]
    for i, (cin, cout, k, pool) in enumerate(plan, start=1):
        layers += [(f"conv{i}", nn.Conv2d(cin, cout, k, padding=k // 2)), (f"relu{i}", nn.ReLU())]
        if pool:
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
    features = nn.Sequential(OrderedDict(layers))
    flat = _flat_size(features, shape, "alexnet-mnist")
    classifier = nn.Sequential(OrderedDict([
        ("drop1", nn.Dropout(dropout)), ("fc1", nn.Linear(flat, 512)), ("relu1", nn.ReLU()),
        ("drop2", nn.Dropout(dropout)), ("fc2", nn.Linear(512, 256)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(256, num_classes)),
    ]))
    return nn.Sequential(OrderedDict([("features", features), ("flatten", nn.Flatten()),
                                      ("classifier", classifier)]))


@MODELS.register("vgg-mnist", help="VGG-style: 3 stages of two 3x3 conv+BN+ReLU, max-pools, 2 fc (0.22M params)")
def vgg_mnist(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
              widths: Sequence[int] = (16, 32, 64), dropout: float = 0.5) -> nn.Module:
    """VGG-style network: per stage two 3x3 conv (no bias) + BatchNorm + ReLU, then max-pool 2."""
    shape = _conv_shape(tuple(input_shape), "vgg-mnist")
    layers: list[tuple[str, nn.Module]] = []
    cin, n = shape[0], 0
    for stage, width in enumerate(widths, start=1):
        for _ in range(2):
            n += 1
            layers += [(f"conv{n}", nn.Conv2d(cin, width, 3, padding=1, bias=False)),
                       (f"bn{n}", nn.BatchNorm2d(width)), (f"relu{n}", nn.ReLU())]
            cin = width
        layers.append((f"pool{stage}", nn.MaxPool2d(2)))
    features = nn.Sequential(OrderedDict(layers))
    flat = _flat_size(features, shape, "vgg-mnist")
    classifier = nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(flat, 256)), ("relu1", nn.ReLU()), ("drop1", nn.Dropout(dropout)),
        ("fc2", nn.Linear(256, num_classes)),
    ]))
    return nn.Sequential(OrderedDict([("features", features), ("flatten", nn.Flatten()),
                                      ("classifier", classifier)]))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, plus an identity or 1x1-conv+BN shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu2(out)


class ResNetMnist(nn.Module):
    """A small ResNet: a stride-2 3x3 stem (28 -> 14, to keep CPU training quick), stages of basic
    blocks (the first of each later stage halves the resolution), global average pool, fc."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int], blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        cin = widths[0]
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            stage = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            cin = width
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{i}")(out)
        return self.fc(self.flatten(self.pool(out)))


@MODELS.register("resnet-mnist",
                 help="small ResNet: stride-2 stem, 3 stages x 2 basic blocks of 16/32/64 ch (0.17M params)")
def resnet_mnist(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64), blocks: int = 2) -> nn.Module:
    """ResNet with basic blocks, identity and 1x1-conv downsample shortcuts, for 28x28 inputs."""
    shape = _conv_shape(tuple(input_shape), "resnet-mnist")
    if not widths or blocks < 1:
        raise ConfigError(f"resnet-mnist needs at least one stage width and blocks >= 1, got {widths!r}, {blocks!r}")
    model = ResNetMnist(shape[0], num_classes, tuple(int(w) for w in widths), int(blocks))
    _flat_size(model, shape, "resnet-mnist")  # fail early, with one line, on too-small inputs
    return model


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q`` / ``k`` / ``v`` projections and an output ``proj``.

    ``num_heads`` and ``head_dim`` are read by ``forward`` (not derived from the layers), so
    pruning that removes whole heads or per-head dimensions keeps the module running by
    updating them.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"vit-mnist's dim ({dim}) must be a multiple of heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        heads, width = self.num_heads, self.head_dim
        q = self.q(x).reshape(b, t, heads, width).transpose(1, 2)  # (B, heads, T, head_dim)
        k = self.k(x).reshape(b, t, heads, width).transpose(1, 2)
        v = self.v(x).reshape(b, t, heads, width).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(width), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, t, heads * width)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (GELU MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict([("fc1", nn.Linear(dim, mlp_dim)), ("act", nn.GELU()),
                                              ("fc2", nn.Linear(mlp_dim, dim))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitMnist(nn.Module):
    """A small vision transformer: non-overlapping patches (a strided conv), a learned position
    embedding, pre-norm blocks, mean pooling over the tokens, LayerNorm, linear head."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, patch: int, dim: int, depth: int,
                 heads: int, mlp_dim: int) -> None:
        super().__init__()
        tokens = (shape[1] // patch) * (shape[2] // patch)
        self.patch_embed = nn.Conv2d(shape[0], dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, T, dim)
        x = self.blocks(x)
        return self.head(self.norm(x.mean(dim=1)))


@MODELS.register("vit-mnist",
                 help="small vision transformer: 7x7 patches, dim 64, 4 heads, 4 blocks, MLP 128 (0.14M params)")
def vit_mnist(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, patch: int = 7, dim: int = 64,
              depth: int = 4, heads: int = 4, mlp_dim: int = 128) -> nn.Module:
    """ViT (Dosovitskiy et al. 2021) scaled to 28x28: separate q/k/v Linear layers per block (so
    whole heads can be pruned), mean pooling instead of a class token."""
    shape = _conv_shape(tuple(input_shape), "vit-mnist")
    if patch < 1 or shape[1] < patch or shape[2] < patch:
        raise ConfigError(f"vit-mnist's patch ({patch}) must be between 1 and the image size {shape[1]}x{shape[2]}")
    if min(dim, depth, heads, mlp_dim) < 1:
        raise ConfigError(f"vit-mnist needs dim, depth, heads and mlp_dim >= 1, got {dim}, {depth}, {heads}, {mlp_dim}")
    return VitMnist(shape, num_classes, int(patch), int(dim), int(depth), int(heads), int(mlp_dim))
