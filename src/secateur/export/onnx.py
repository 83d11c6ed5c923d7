"""``onnx`` export: a pruned model as an ONNX graph with a dynamic batch axis, checked by onnxruntime.

Masked models are exported with their masks folded (on a copy: the caller's model is never
touched); structurally pruned models are ordinary, smaller modules and export as they are.
The graph is built by PyTorch's maintained exporter (``torch.onnx.export(dynamo=True)``,
``exporter=dynamo``); ``exporter=auto`` falls back to the TorchScript exporter for a model the
dynamo one cannot export, and the exporter that wrote the file is in the details.

Every export is checked before anything is written: ``onnx.checker`` validates the graph, then
onnxruntime runs random inputs at batch 1 and 3 (so the batch axis is really dynamic) and the
outputs are compared with PyTorch's. The tolerance is 1e-5 in absolute terms for outputs up to 1
in magnitude and 1e-5 relative beyond (float32 carries about 7 digits, and a deep net's logits
may be in the hundreds). A mismatch raises :class:`~secateur.errors.ExportError` and writes no
file. The details also give onnxruntime's latency beside PyTorch's (median of ``latency_runs``
interleaved runs at batch 1 and 32, one thread on both sides).

Needs the ``export`` extra: ``pip install 'secateur[export]'`` (onnx, onnxscript, onnxruntime);
these import only when an ONNX export runs, so the format is always listed.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secateur.errors import ConfigError, ExportError
from secateur.export import ExportFormat, ExportOption, register_format
from secateur.io.storage import atomic_write_bytes
from secateur.provenance import recorded_model
from secateur.unstructured.masks import make_permanent

EXPORTERS = ("auto", "dynamo", "torchscript")
TOLERANCE = 1e-5
VERIFY_BATCHES = (1, 3)
LATENCY_BATCHES = (1, 32)
INSTALL_HINT = "pip install 'secateur[export]'"


# --------------------------------------------------------------------------- options


def parse_shape(value: object) -> tuple[int, ...] | None:
    """``"3,64,64"`` or a sequence of ints: one sample's shape (no batch dimension)."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, Sequence):
        raise ValueError("expected positive integers like 3,224,224")
    shape = tuple(int(p) for p in parts)
    if not shape or any(d < 1 for d in shape):
        raise ValueError("expected positive integers like 3,224,224")
    return shape


def parse_bool(value: object) -> bool:
    """``true``/``false`` (also 1/0, yes/no) from the command line, or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("expected true or false")
    return text in ("true", "1", "yes")


def parse_choice(choices: Sequence[str]) -> Callable[[object], str]:
    """A parser that accepts one of ``choices``."""
    def parse(value: object) -> str:
        if str(value) not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(value)
    return parse


def parse_count(value: object) -> int:
    """A non-negative integer."""
    number = int(str(value))
    if number < 0:
        raise ValueError("expected an integer >= 0")
    return number


def parse_opset(value: object) -> int | None:
    """An ONNX opset version (None: the exporter's default)."""
    if value is None:
        return None
    number = int(str(value))
    if not 7 <= number <= 30:
        raise ValueError("expected an ONNX opset version such as 18 or 20")
    return number


# --------------------------------------------------------------------------- the writer


def require_onnx() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules, or a one-line error saying how to install them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as error:
        raise ConfigError(f"ONNX export needs onnx, onnxscript and onnxruntime ({error.name} is missing); "
                          f"{INSTALL_HINT}") from None
    return onnx, onnxruntime


def deployable(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with every mask folded (the caller's model untouched)."""
    folded = make_permanent(copy.deepcopy(model)).cpu().eval()
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    return folded


def input_shape_of(model: nn.Module, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """``given``, else the input shape the model's record carries, else a one-line error."""
    if given is not None:
        return given
    record = recorded_model(model) or {}
    shape = (record.get("args") or {}).get("input_shape")
    if not shape:
        raise ConfigError("the model records no input shape; pass input_shape, e.g. "
                          "--option input_shape=3,224,224 (or input_shape=(3, 224, 224) in Python)")
    return tuple(int(d) for d in shape)


def write_onnx(model: nn.Module, path: Path, options: Mapping[str, object]) -> Mapping[str, object]:
    """Export, validate and verify ``model``; write ``path`` only if onnxruntime agrees with PyTorch."""
    onnx, ort = require_onnx()
    shape = input_shape_of(model, options["input_shape"])  # type: ignore[arg-type]
    deployed = deployable(model)
    data, exporter, fallback = to_onnx(deployed, shape, str(options["exporter"]), options["opset"])  # type: ignore[arg-type]
    proto = onnx.load_from_string(data)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the ONNX graph of this model is invalid ({_first_line(error)})") from None
    session = new_session(ort, data)
    details: dict[str, object] = {"exporter": exporter, "opset": opset_of(proto), "input_shape": list(shape)}
    if fallback:
        details["dynamo_error"] = fallback
    if options["verify"]:
        inputs = random_inputs(shape, VERIFY_BATCHES)
        details.update(check_outputs(deployed, session, inputs))
    if options["latency_runs"]:
        details["latency"] = compare_latency(deployed, session, shape, int(options["latency_runs"]))  # type: ignore[call-overload]
    atomic_write_bytes(path, data)
    return details


def to_onnx(model: nn.Module, shape: tuple[int, ...], exporter: str, opset: int | None) -> tuple[bytes, str, str]:
    """The serialised graph, the exporter that made it, and why dynamo failed (auto's fallback)."""
    example = torch.zeros(2, *shape)  # batch 2: a batch of 1 would be specialised away
    try:
        torch_outputs(model, example)
    except (RuntimeError, ValueError, TypeError) as error:
        raise ConfigError(f"the model does not run on inputs of shape {','.join(map(str, shape))} "
                          f"({_first_line(error)[:200]}); pass the right input_shape") from None
    try:
        if exporter in ("auto", "dynamo"):
            try:
                return export_dynamo(model, example, opset), "dynamo", ""
            except Exception as error:  # the exporter raises many types; auto retries, dynamo reports
                if exporter == "dynamo":
                    raise
                reason = f"{type(error).__name__}: {_first_line(error)}"[:300]
                return export_torchscript(model, example, opset), "torchscript", reason
        return export_torchscript(model, example, opset), "torchscript", ""
    except (RuntimeError, ValueError, TypeError, AssertionError, torch.onnx.errors.OnnxExporterError) as error:
        raise ExportError(f"torch.onnx cannot export this model for input shape {','.join(map(str, shape))}: "
                          f"{type(error).__name__}: {_first_line(error)}"[:400]
                          + "; check input_shape, or try --option exporter=torchscript") from None


def export_dynamo(model: nn.Module, example: torch.Tensor, opset: int | None) -> bytes:
    """``torch.onnx.export(dynamo=True)`` with a dynamic batch axis, serialised in memory."""
    batch = torch.export.Dim("batch", min=1)
    with _quiet():
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                    opset_version=opset, input_names=["input"], verbose=False)
    assert program is not None  # the dynamo path returns an ONNXProgram
    return bytes(program.model_proto.SerializeToString())


def export_torchscript(model: nn.Module, example: torch.Tensor, opset: int | None) -> bytes:
    """The legacy TorchScript exporter (``dynamo=False``) with a dynamic batch axis."""
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(model, (example,), buffer, dynamo=False,  # type: ignore[arg-type]
                          opset_version=opset, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return buffer.getvalue()


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation and tracer warnings (the verification is what counts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def opset_of(proto: Any) -> int:
    """The default-domain opset version the graph was written for."""
    return next((int(entry.version) for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 0)


# --------------------------------------------------------------------------- verification and latency


def new_session(ort: Any, data: bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session over the serialised graph, ``threads`` threads (1: a fair comparison)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def random_inputs(shape: tuple[int, ...], batches: Sequence[int], seed: int = 0) -> list[torch.Tensor]:
    """One standard-normal batch per size in ``batches`` (seeded: a failure reproduces)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=generator) for batch in batches]


def check_outputs(model: nn.Module, session: Any, inputs: Sequence[torch.Tensor]) -> dict[str, object]:
    """Max |ORT - PyTorch| over ``inputs``; raises :class:`ExportError` beyond the tolerance."""
    worst, scale = 0.0, 0.0
    for x in inputs:
        ours, theirs = torch_outputs(model, x), session.run(None, {session.get_inputs()[0].name: x.numpy()})
        if len(ours) != len(theirs) or any(tuple(a.shape) != b.shape for a, b in zip(ours, theirs)):
            raise ExportError(f"onnxruntime returned outputs of shapes {[b.shape for b in theirs]} for a batch "
                              f"of {len(x)}, PyTorch {[tuple(a.shape) for a in ours]}; the batch axis is not dynamic")
        for a, b in zip(ours, theirs):
            worst = max(worst, float((a - torch.from_numpy(b)).abs().max()))
            scale = max(scale, float(a.abs().max()))
    tolerance = TOLERANCE * max(1.0, scale)
    if not worst <= tolerance:
        raise ExportError(f"onnxruntime disagrees with PyTorch by {worst:.3g} (tolerance {tolerance:.3g}); "
                          f"the export is not faithful, try --option exporter=torchscript or another opset")
    return {"max_abs_diff": worst, "tolerance": tolerance, "verified_batches": [len(x) for x in inputs]}


def torch_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The model's output tensors (a tuple or dict of outputs flattened in order)."""
    with torch.inference_mode():
        out = model(x)
    leaves = torch.utils._pytree.tree_leaves(out)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def compare_latency(model: nn.Module, session: Any, shape: tuple[int, ...], runs: int,
                    batches: Sequence[int] = LATENCY_BATCHES, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median seconds per forward of PyTorch and onnxruntime, interleaved, one thread each."""
    result = {}
    name = session.get_inputs()[0].name
    with one_torch_thread():
        for batch in batches:
            x = torch.randn(batch, *shape)
            sides: dict[str, Callable[[], object]] = {
                "torch": partial(torch_outputs, model, x), "onnxruntime": partial(session.run, None, {name: x.numpy()})}
            times: dict[str, list[float]] = {side: [] for side in sides}
            for i in range(warmup + runs):
                for side, call in sides.items():
                    start = time.perf_counter()
                    call()
                    if i >= warmup:
                        times[side].append(time.perf_counter() - start)
            result[f"b{batch}"] = {side: statistics.median(values) for side, values in times.items()}
    return result


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """PyTorch on one intra-op thread for the block (restored after), to match the ORT session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


ONNX = register_format(ExportFormat(
    "onnx", ".onnx", write_onnx,
    "ONNX graph (dynamic batch, masks folded), verified by onnxruntime against PyTorch; needs secateur[export]",
    options={
        "input_shape": ExportOption(parse_shape, "one sample's shape C,H,W (default: the model's recorded shape)"),
        "opset": ExportOption(parse_opset, "ONNX opset version (default: the exporter's, 20 in torch 2.14)"),
        "exporter": ExportOption(parse_choice(EXPORTERS), "dynamo, torchscript, or auto (dynamo, then torchscript)",
                                 "auto"),
        "verify": ExportOption(parse_bool, "check onnxruntime's outputs against PyTorch's before writing", True),
        "latency_runs": ExportOption(parse_count, "runs per latency median, batch 1 and 32 (0: skip)", 10),
    }))
