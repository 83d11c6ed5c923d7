"""Size and cost accounting: parameters, nonzeros, MACs, sparsity, file size, latency.

Weights may be wrapped by masks through ``torch.nn.utils.parametrize``. All counts here read
the *effective* tensors (``getattr(module, "weight")``, i.e. the masked weight), never
``module.parameters()`` (which would yield ``parametrizations.weight.original``), so a pruned
weight counts as zero. A parametrized module is still the layer; its ``parametrizations``
container is not a layer of its own.

MACs (multiply-accumulates) are for one input sample:

* Conv: output elements x (in_channels / groups x kernel size); nonzero: nonzero weights x
  output positions (what a sparse kernel would do).
* ConvTranspose: input elements x (out_channels / groups x kernel size); nonzero: nonzero
  weights x input positions.
* Linear: out x in x (leading positions per sample); nonzero: nonzero weights x positions.
* Everything else (norms, activations, pooling, attention products): 0.
"""

from __future__ import annotations

import math
import operator
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from rich.table import Table
from torch import nn
from torch.nn.utils import parametrize

from secateur.errors import ConfigError

Device = str | torch.device | None
ForwardHook = Callable[[nn.Module, tuple, dict, object], None]


@dataclass(frozen=True)
class LayerStats:
    """Size and cost of one layer (a module that owns parameters) for one input sample."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    weights: int
    weights_nonzero: int
    biases: int
    biases_nonzero: int
    macs: int
    macs_nonzero: int

    @property
    def params_nonzero(self) -> int:
        """Nonzero parameters (weights + biases)."""
        return self.weights_nonzero + self.biases_nonzero


@dataclass(frozen=True)
class SparsityRow:
    """How many of ``total`` entries are nonzero."""

    name: str
    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        """Fraction of entries that are zero (0.0 for an empty row)."""
        return 1.0 - self.kept if self.total else 0.0

    @property
    def kept(self) -> float:
        """Fraction of entries that are nonzero (1.0 for an empty row)."""
        return self.nonzero / self.total if self.total else 1.0

    def as_dict(self) -> dict:
        """``{"total", "nonzero", "sparsity"}`` as written in reports."""
        return {"total": self.total, "nonzero": self.nonzero, "sparsity": self.sparsity}


# --------------------------------------------------------------------------- walking the model


def layer_kind(module: nn.Module) -> str:
    """The module's class name; for a parametrized module, the class it was before wrapping."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls.__name__


def _is_bias(tensor_name: str) -> bool:
    return tensor_name == "bias" or tensor_name.endswith("_bias")


def _parametrizations(module: nn.Module) -> nn.ModuleDict:
    """``module.parametrizations`` (torch types ``Module.__getattr__`` as ``Tensor | Module``)."""
    return cast(nn.ModuleDict, module.parametrizations)


def _owned_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The effective parameters a module owns directly (masked values for parametrized ones)."""
    names = [n for n, _ in module.named_parameters(recurse=False)]
    if parametrize.is_parametrized(module):
        names += [n for n in _parametrizations(module) if n not in names]
    with torch.no_grad():
        return {n: getattr(module, n) for n in names}


def _layers(model: nn.Module) -> list[tuple[str, nn.Module, dict[str, torch.Tensor]]]:
    """``(name, module, tensors)`` for every module owning parameters, skipping mask containers."""
    hidden: set[int] = set()
    for module in model.modules():
        if parametrize.is_parametrized(module):
            hidden.update(id(m) for m in _parametrizations(module).modules())
    layers = []
    for name, module in model.named_modules():
        tensors = {} if id(module) in hidden else _owned_tensors(module)
        if tensors:
            layers.append((name, module, tensors))
    return layers


def _split_counts(tensors: dict[str, torch.Tensor]) -> tuple[int, int, int, int]:
    """``(weights, weights_nonzero, biases, biases_nonzero)`` over a module's tensors."""
    counts = [0, 0, 0, 0]
    for tname, t in tensors.items():
        at = 2 if _is_bias(tname) else 0
        counts[at] += t.numel()
        counts[at + 1] += int(torch.count_nonzero(t))
    return counts[0], counts[1], counts[2], counts[3]


def _weight_shape(tensors: dict[str, torch.Tensor]) -> tuple[int, ...]:
    main = tensors.get("weight", next(iter(tensors.values())))
    return tuple(main.shape)


# --------------------------------------------------------------------------- MACs


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """Dense and nonzero MACs of one call of ``module`` on a batch of one sample."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return 0, 0
    nonzero = int(torch.count_nonzero(weight))
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        positions = math.prod(inp.shape[2:])
        per_input = module.out_channels // module.groups * math.prod(module.kernel_size)
        return inp[0].numel() * per_input, nonzero * positions
    if isinstance(module, nn.modules.conv._ConvNd):
        positions = math.prod(out.shape[2:])
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return out[0].numel() * per_output, nonzero * positions
    if isinstance(module, nn.Linear):
        positions = inp.numel() // max(module.in_features, 1)
        return positions * module.in_features * module.out_features, nonzero * positions
    return 0, 0


def _first_tensor(value: object) -> torch.Tensor | None:
    """The first tensor in a module's input/output (tensors, tuples, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _trace(model: nn.Module, modules: dict[str, nn.Module], input_shape: Sequence[int],
           device: Device) -> dict[str, dict]:
    """Run one zero sample through ``model`` in eval mode, recording MACs and output shapes."""
    record: dict[str, dict] = {name: {"macs": 0, "macs_nonzero": 0, "output_shape": ()} for name in modules}

    def hook_for(name: str) -> ForwardHook:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            inp, out = _first_tensor((args, kwargs)), _first_tensor(output)
            if inp is None or out is None:
                return
            dense, nonzero = _macs(module, inp, out)
            rec = record[name]
            rec["macs"] += dense
            rec["macs_nonzero"] += nonzero
            rec["output_shape"] = tuple(out.shape[1:])
        return hook

    handles = [m.register_forward_hook(hook_for(n), with_kwargs=True) for n, m in modules.items()]
    try:
        _forward_zeros(model, input_shape, 1, device)
    finally:
        for handle in handles:
            handle.remove()
    return record


def _forward_zeros(model: nn.Module, input_shape: Sequence[int], batch_size: int, device: Device) -> None:
    """One eval-mode, no-grad forward of a zero batch; the modules' train flags are restored."""
    x = zero_input(model, input_shape, batch_size, device)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except RuntimeError as err:
        shape = ",".join(map(str, input_shape))
        raise ConfigError(f"the model does not accept inputs of shape {shape}: "
                          f"{str(err).strip().splitlines()[0] if str(err).strip() else 'RuntimeError'}") from None
    finally:
        for m, mode in modes.items():
            m.training = mode


def zero_input(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
               device: Device = None) -> torch.Tensor:
    """A zero input batch on ``device`` (default: the model's device) in the model's float dtype, or
    token ids (long zeros) for a model that embeds tokens first (a Hugging Face text model, whose
    ``get_input_embeddings()`` is an ``nn.Embedding``): the example input of tracing and counting."""
    try:
        shape = tuple(operator.index(d) for d in input_shape)
    except TypeError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"input_shape must be positive integers like 1,28,28, got {input_shape!r}")
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.float32
    if device is None:
        device = first.device if first is not None else "cpu"
    if _reads_tokens(model):
        dtype = torch.long
    return torch.zeros(batch_size, *shape, dtype=dtype, device=device)


def _reads_tokens(model: nn.Module) -> bool:
    embeddings = getattr(model, "get_input_embeddings", None)
    try:
        return callable(embeddings) and isinstance(embeddings(), nn.Embedding)
    except Exception:  # a model whose input embeddings are not defined (NotImplementedError ...)
        return False


# --------------------------------------------------------------------------- public API


def layer_stats(model: nn.Module, input_shape: Sequence[int], device: Device = None) -> list[LayerStats]:
    """One :class:`LayerStats` per module that owns parameters, in module order.

    Runs one forward of a single zero sample of ``input_shape`` (no batch dimension) in eval
    mode with forward hooks; ``device`` defaults to the model's. Modules that the forward never
    calls get ``output_shape=()`` and zero MACs.
    """
    layers = _layers(model)
    traced = _trace(model, {name: module for name, module, _ in layers}, input_shape, device)
    rows = []
    for name, module, tensors in layers:
        w, w_nz, b, b_nz = _split_counts(tensors)
        rec = traced[name]
        rows.append(LayerStats(name=name, kind=layer_kind(module), weight_shape=_weight_shape(tensors),
                               output_shape=tuple(rec["output_shape"]), params=w + b, weights=w,
                               weights_nonzero=w_nz, biases=b, biases_nonzero=b_nz,
                               macs=rec["macs"], macs_nonzero=rec["macs_nonzero"]))
    return rows


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """All parameters of ``model`` (effective, masked tensors); only the nonzero ones if asked."""
    total = 0
    for _, _, tensors in _layers(model):
        w, w_nz, b, b_nz = _split_counts(tensors)
        total += (w_nz + b_nz) if nonzero else (w + b)
    return total


def count_macs(model: nn.Module, input_shape: Sequence[int], nonzero: bool = False) -> int:
    """Multiply-accumulates for one sample of ``input_shape``; with ``nonzero`` only those of nonzero weights."""
    stats = layer_stats(model, input_shape)
    return sum(s.macs_nonzero if nonzero else s.macs for s in stats)


def sparsity_report(model: nn.Module) -> dict:
    """Per-layer and overall counts of weights and biases, total / nonzero / sparsity.

    ``{"layers": [{"name", "kind", "weights": {...}, "biases": {...}}], "overall": {"total",
    "nonzero", "sparsity", "weights": {...}, "biases": {...}}}``; each ``{...}`` is
    ``{"total", "nonzero", "sparsity"}``.
    """
    layers, sums = [], [0, 0, 0, 0]
    for name, module, tensors in _layers(model):
        counts = _split_counts(tensors)
        sums = [a + c for a, c in zip(sums, counts)]
        layers.append({"name": name, "kind": layer_kind(module),
                       "weights": SparsityRow(name, counts[0], counts[1]).as_dict(),
                       "biases": SparsityRow(name, counts[2], counts[3]).as_dict()})
    overall = SparsityRow("overall", sums[0] + sums[2], sums[1] + sums[3]).as_dict()
    overall["weights"] = SparsityRow("weights", sums[0], sums[1]).as_dict()
    overall["biases"] = SparsityRow("biases", sums[2], sums[3]).as_dict()
    return {"layers": layers, "overall": overall}


def file_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a file, or the total of the files under a folder."""
    target = Path(path)
    if target.is_file():
        return target.stat().st_size
    if target.is_dir():
        return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    raise ConfigError(f"{target} does not exist; give the path of a saved model file or folder")


def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, repeats: int = 20,
                    warmup: int = 3, device: Device = None) -> float:
    """Median seconds per forward of a zero batch, in eval mode under ``torch.inference_mode``.

    On a GPU each forward is timed with CUDA events (the GPU's own clock, after a synchronize),
    on the CPU with ``time.perf_counter``. ``device`` defaults to the model's.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ConfigError(f"latency needs batch_size >= 1, repeats >= 1, warmup >= 0; "
                          f"got {batch_size}, {repeats}, {warmup}")
    x = zero_input(model, input_shape, batch_size, device)
    timer = _cuda_timer if x.device.type == "cuda" else _cpu_timer
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            times = [timer(model, x) for _ in range(warmup + repeats)][warmup:]
    finally:
        for m, mode in modes.items():
            m.training = mode
    return statistics.median(times)


def _cpu_timer(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward on the CPU (wall clock)."""
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def _cuda_timer(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward on ``x``'s GPU, between two CUDA events on its current stream."""
    with torch.cuda.device(x.device):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


def format_layer_table(stats: list[LayerStats]) -> Table:
    """A rich table of layers: name, kind, weight and output shapes, params (nonzero), MACs."""
    table = Table(title="layers", show_footer=True)
    shape = lambda s: "x".join(map(str, s)) or "-"  # noqa: E731 - tiny local formatter
    table.add_column("layer", footer="total")
    table.add_column("kind")
    table.add_column("weight shape")
    table.add_column("output")
    table.add_column("params", justify="right", footer=f"{sum(s.params for s in stats):,}")
    table.add_column("nonzero", justify="right", footer=f"{sum(s.params_nonzero for s in stats):,}")
    table.add_column("MACs", justify="right", footer=f"{sum(s.macs for s in stats):,}")
    for s in stats:
        table.add_row(s.name or "(model)", s.kind, shape(s.weight_shape), shape(s.output_shape),
                      f"{s.params:,}", f"{s.params_nonzero:,}", f"{s.macs:,}")
    return table
