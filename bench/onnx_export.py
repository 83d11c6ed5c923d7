"""ONNX export of every zoo model and of torchvision classifiers, dense and pruned, verified by onnxruntime.

Each model is exported with ``secateur.export.export_model(..., "onnx")``, which checks the graph
with ``onnx.checker`` and compares onnxruntime with PyTorch at batch 1 and 3 (dynamic batch axis);
zoo models are also compared on 256 real MNIST test images. Variants:

* zoo models (untrained weights, 1x28x28): dense; masked to 90% by global magnitude (masks
  folded on export); structurally pruned to 50% of channels (``prune_channels``, L1);
* torchvision classifiers (``weights=None``, 10 classes, 3x64x64 inputs to stay affordable on
  a shared 2-core machine; BatchNorm statistics calibrated on two random batches): dense, and
  structurally pruned to 50% of channels.

Latency: median of N interleaved runs, PyTorch vs onnxruntime, one thread each, batch 1 and 32.
The machine is shared, so absolute numbers are noisy; the ratio within a row is the comparison.

    python bench/onnx_export.py [--models lenet5,torchvision:resnet18] [--runs 5]

Writes bench/results/onnx_export.{json,md}, after every model (a partial run keeps its rows); rows
of models not named in ``--models`` are kept from the existing JSON, so the benchmark can run in parts.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur.export import export_model
from secateur.export.onnx import check_outputs, deployable, new_session, require_onnx
from secateur.structured import prune_channels
from secateur.unstructured.masks import apply_masks
from secateur.zoo.data import batches, load_dataset
from secateur.zoo.models import MODELS, build_model

RESULTS = Path(__file__).resolve().parent / "results"
TORCHVISION = [
    "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
    "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf",
    "regnet_y_400mf", "densenet121", "squeezenet1_0", "squeezenet1_1", "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0", "mnasnet0_5", "mnasnet1_0", "googlenet", "vgg11", "alexnet", "convnext_tiny",
    "vit_b_16", "swin_t",
]
EXTRA_ARGS = {"googlenet": {"init_weights": False, "aux_logits": False}, "vit_b_16": {"image_size": 64}}


def global_magnitude(model: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    """Mask the smallest-magnitude ``sparsity`` of all Linear/Conv2d weights, one global threshold."""
    layers = {f"{name}.weight": m.weight for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    scores = torch.cat([w.detach().abs().flatten() for w in layers.values()])
    threshold = scores.kthvalue(max(1, int(sparsity * scores.numel()))).values
    apply_masks(model, {name: w.detach().abs() > threshold for name, w in layers.items()})
    return model


def base_model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The dense model (BatchNorm statistics from two random batches) and an example batch."""
    torch.manual_seed(0)
    shape = (3, 64, 64) if name.startswith("torchvision:") else (1, 28, 28)
    model = build_model(name, input_shape=shape, **EXTRA_ARGS.get(name.split(":")[-1], {}))
    x = torch.randn(4, *shape)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    return model.eval(), x


def variants(name: str) -> list[tuple[str, Callable[[], torch.nn.Module]]]:
    """(variant, builder) pairs for one model name; a builder that fails becomes a failed row."""
    cache: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}

    def dense() -> torch.nn.Module:
        if not cache:
            cache["m"] = base_model(name)
        return cache["m"][0]

    def channels() -> torch.nn.Module:
        model, x = dense(), cache["m"][1]
        return prune_channels(model, x[:1], 0.5, inplace=False)[0]

    out = [("dense", dense)]
    if not name.startswith("torchvision:"):
        out.append(("masked 90%", lambda: global_magnitude(copy.deepcopy(dense()), 0.9)))
    out.append(("channels 50%", channels))
    return out


def mnist_inputs(shape: tuple[int, ...]) -> list[torch.Tensor]:
    """256 real MNIST test images, normalised as training does (zoo models only)."""
    data = load_dataset("mnist").subset(10, 10, 256)
    return [x for x, _ in batches(data.test, 256, mean=data.mean, std=data.std)]


def run_one(name: str, variant: str, build: Callable[[], torch.nn.Module], runs: int) -> dict:
    """Export one model, verify it, time it; a failure is a row too."""
    shape = (3, 64, 64) if name.startswith("torchvision:") else (1, 28, 28)
    row: dict = {"model": name, "variant": variant, "input": "x".join(map(str, shape))}
    start = time.perf_counter()
    try:
        model = build()
        row["params"] = sum(p.numel() for p in model.parameters())
        with tempfile.TemporaryDirectory() as tmp:
            done = export_model(model, Path(tmp) / "m.onnx", "onnx", input_shape=shape, latency_runs=runs)
            row.update(done.details, bytes=done.bytes, ok=True)
            if not name.startswith("torchvision:"):
                _, ort = require_onnx()
                session = new_session(ort, (Path(tmp) / "m.onnx").read_bytes())
                real = check_outputs(deployable(model), session, mnist_inputs(shape))
                row["max_abs_diff_mnist"] = real["max_abs_diff"]
    except Exception as error:  # every failure is reported, the benchmark goes on
        row.update(ok=False, error=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
        traceback.print_exc()
    row["seconds"] = time.perf_counter() - start
    return row


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.2f}"


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table, with a summary line."""
    ok = [r for r in rows if r.get("ok")]
    lines = [f"{len(ok)} of {len(rows)} exports verified by onnxruntime "
             f"({len({r['model'] for r in ok})} models); max |diff| ≤ 1e-5·max(1, max|output|).", "",
             "| model | variant | input | params | exporter | max abs diff (random / MNIST) | tolerance | "
             "b1 torch ms | b1 ORT ms | b1 torch/ORT | b32 torch ms | b32 ORT ms | b32 torch/ORT |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if not r.get("ok"):
            lines.append(f"| {r['model']} | {r['variant']} | {r['input']} | {r.get('params', '-')} | FAILED: "
                         f"{r['error'].replace('|', '/')} | | | | | | | | |")
            continue
        lat = r.get("latency", {})
        cells = []
        for b in ("b1", "b32"):
            t, o = lat.get(b, {}).get("torch"), lat.get(b, {}).get("onnxruntime")
            cells += [ms(t), ms(o), f"{t / o:.2f}x" if t and o else "-"]
        mnist = f" / {r['max_abs_diff_mnist']:.1e}" if "max_abs_diff_mnist" in r else ""
        lines.append(f"| {r['model']} | {r['variant']} | {r['input']} | {r['params']:,} | {r['exporter']} | "
                     f"{r['max_abs_diff']:.1e}{mnist} | {r['tolerance']:.0e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def kept_rows(path: Path, names: list[str]) -> list[dict]:
    """Rows of an earlier run for models not run this time (a benchmark can be run in parts)."""
    if not path.exists():
        return []
    return [row for row in json.loads(path.read_text()) if row["model"] not in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*MODELS.names(), *(f"torchvision:{m}" for m in TORCHVISION)]))
    parser.add_argument("--runs", type=int, default=5, help="runs per latency median")
    parser.add_argument("--out", type=Path, default=RESULTS / "onnx_export")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.models.split(",")
    rows = kept_rows(args.out.with_suffix(".json"), names)
    for name in names:
        for variant, build in variants(name):
            rows.append(run_one(name, variant, build, args.runs))
            r = rows[-1]
            print(f"{name} {variant}: {'ok' if r['ok'] else r['error']} ({r['seconds']:.0f} s)", flush=True)
            args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
            args.out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
