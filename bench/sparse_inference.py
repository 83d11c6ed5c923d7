"""Sparse CPU inference (``secateur.sparse_model``) against dense, at batch 1 and 32: where it pays, where it loses.

Cases:

* LeNet-300-100 and LeNet-5 pruned by global magnitude to the sparsity of the Han-table runs
  (untrained weights: latency does not depend on accuracy), and the runs' own pruned
  ``model.safetensors`` when given and present;
* one 4096x4096 Linear at 50% ... 99% zeros, scattered (magnitude-like) and in 16x16 blocks.

Kernels: dense ``F.linear`` / the dense model; torch CSR; torch BSR (16x16 blocks); the default
``sparse_model`` (CSR where >= 90% zeros); LeNet-5 also with its convolutions as im2col + CSR; and
scipy's CSR product as a peer library for the single layer. Every variant's output is checked
against dense (max |diff|). One thread, medians of interleaved repeats (the machine is shared and
noisy: the variants of one case alternate, so load hits them alike).

    python bench/sparse_inference.py [--lenet300 RUN/model.safetensors] [--lenet5 ...] [--repeats 30]

Writes bench/results/sparse_inference.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur import build_model, load_model, make_permanent
from secateur.inference import sparse_model
from secateur.inference.sparse import SparseLinear, sparsity
from secateur.unstructured.masks import apply_masks

RESULTS = Path(__file__).resolve().parent / "results"
DENSITIES = (0.5, 0.3, 0.1, 0.05, 0.02, 0.01)
HAN_SPARSITY = {"lenet300": 0.935, "lenet5": 0.959}  # what the Han-table runs reach under the 0.1 bound
RUNS = {"lenet300": "runs/bench/lenet300/prune/model.safetensors",
        "lenet5": "runs/bench/lenet5/prune/model.safetensors"}

warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")


def timed(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 5) -> dict[str, dict[str, float]]:
    """Median and minimum seconds per call of each function, the functions interleaved within each repeat.

    On a loaded machine the median includes time slices lost to other processes (more of them the
    longer a call runs); the minimum is the closest to the uncontended cost. Both are reported.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: {"median": statistics.median(values), "min": min(values)} for name, values in times.items()}


def global_magnitude(model: torch.nn.Module, target: float) -> torch.nn.Module:
    """Mask the smallest ``target`` of all Linear/Conv2d weights by magnitude (one threshold)."""
    layers = {f"{n}.weight": m.weight for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    scores = torch.cat([w.detach().abs().flatten() for w in layers.values()])
    threshold = scores.kthvalue(int(target * scores.numel())).values
    apply_masks(model, {name: w.detach().abs() > threshold for name, w in layers.items()})
    return model


def pruned_lenets(name: str, path: str | None) -> list[tuple[torch.nn.Module, str]]:
    """The model pruned to Han et al.'s sparsity by global magnitude, and the run's model if present."""
    torch.manual_seed(0)
    target = HAN_SPARSITY[name]
    models = [(global_magnitude(build_model(name), target), f"untrained, global magnitude {target:.1%}")]
    if path and Path(path).exists():
        models.append((load_model(path)[0], path))
    return models


def model_rows(name: str, model: torch.nn.Module, source: str, repeats: int) -> list[dict]:
    """Dense vs the sparse variants of one pruned model, batch 1 and 32."""
    dense = make_permanent(model).eval()
    weights = [m.weight for m in dense.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    variants = {"dense": dense, "csr": sparse_model(dense, min_sparsity=0.0),
                "bsr": sparse_model(dense, layout="bsr", min_sparsity=0.0), "default": sparse_model(dense)}
    if any(isinstance(m, torch.nn.Conv2d) for m in dense.modules()):
        variants["csr+convs"] = sparse_model(dense, min_sparsity=0.0, convs=True)
    rows = []
    for batch in (1, 32):
        x = torch.randn(batch, 1, 28, 28)
        with torch.inference_mode():
            ref = dense(x)
            diffs = {k: float((v(x) - ref).abs().max()) for k, v in variants.items()}
        times = timed({k: partial(v, x) for k, v in variants.items()}, repeats)
        rows.append({"case": name, "source": source, "sparsity": zeros, "batch": batch, "seconds": times,
                     "max_abs_diff": diffs,
                     "default_sparse_layers": sum(isinstance(m, SparseLinear) for m in variants["default"].modules())})
    return rows


def block_mask(rows: int, cols: int, density: float, block: int, generator: torch.Generator) -> torch.Tensor:
    """Keep ``density`` of the ``block`` x ``block`` tiles (random ones)."""
    tiles = torch.rand(rows // block, cols // block, generator=generator) < density
    return tiles.repeat_interleave(block, 0).repeat_interleave(block, 1)


def layer_rows(size: int, repeats: int) -> list[dict]:
    """One size x size Linear at each density: scattered zeros and 16x16 block zeros."""
    import scipy.sparse  # a peer library (installed with scikit-learn); not a secateur dependency

    generator = torch.Generator().manual_seed(0)
    rows = []
    for density in DENSITIES:
        for pattern in ("scattered", "blocks 16x16"):
            weight = torch.randn(size, size, generator=generator)
            keep = (torch.rand(size, size, generator=generator) < density if pattern == "scattered"
                    else block_mask(size, size, density, 16, generator))
            linear = torch.nn.Linear(size, size)
            with torch.no_grad():
                linear.weight.copy_(weight * keep)
            csr, bsr = SparseLinear(linear, "csr", 16), SparseLinear(linear, "bsr", 16)
            sp = scipy.sparse.csr_matrix(linear.weight.detach().numpy())
            for batch in (1, 32):
                x = torch.randn(batch, size, generator=generator)
                xt = x.numpy().T.copy()
                calls = {"dense": partial(F.linear, x, linear.weight, linear.bias), "csr": partial(csr, x),
                         "bsr": partial(bsr, x), "scipy csr": partial(sp.dot, xt)}
                with torch.inference_mode():
                    ref = linear(x)
                    diffs = {"csr": float((csr(x) - ref).abs().max()), "bsr": float((bsr(x) - ref).abs().max())}
                rows.append({"case": f"Linear {size}x{size}, {pattern}", "sparsity": sparsity(linear.weight),
                             "batch": batch, "seconds": timed(calls, repeats), "max_abs_diff": diffs})
                print(f"{rows[-1]['case']} {1 - density:.0%} b{batch}: "
                      + ", ".join(f"{k} {1e3 * v['median']:.3f} ms" for k, v in rows[-1]["seconds"].items()),
                      flush=True)
    return rows


def crossover(rows: list[dict], case: str, batch: int, kernel: str = "csr", stat: str = "median") -> float | None:
    """The lowest sparsity from which ``kernel`` beat dense at every measured higher sparsity."""
    ordered = sorted((r for r in rows if r["case"] == case and r["batch"] == batch), key=lambda r: -r["sparsity"])
    found = None
    for r in ordered:
        if r["seconds"][kernel][stat] >= r["seconds"]["dense"][stat]:
            break
        found = r["sparsity"]
    return found


def markdown(rows: list[dict]) -> str:
    """Latency (median ms) and speed-up over dense by median and by minimum (< 1x: a slow-down), crossovers."""
    kernels = [k for k in ("csr", "bsr", "default", "csr+convs", "scipy csr") if any(k in r["seconds"] for r in rows)]
    lines = ["| case | zeros | batch | dense ms | " + " | ".join(f"{k} ms (speed-up median / min)" for k in kernels)
             + " |", "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in kernels) + " |"]
    for r in rows:
        t = r["seconds"]
        cells = [f"{1e3 * t[k]['median']:.3f} ({t['dense']['median'] / t[k]['median']:.2f}x / "
                 f"{t['dense']['min'] / t[k]['min']:.2f}x)" if k in t else "-" for k in kernels]
        lines.append(f"| {r['case']} | {r['sparsity']:.1%} | {r['batch']} | {1e3 * t['dense']['median']:.3f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Crossover: the lowest measured sparsity from which the kernel beats dense at every higher one",
              "(by median / by minimum):", ""]
    for case in dict.fromkeys(r["case"] for r in rows if r["case"].startswith("Linear")):
        for batch in (1, 32):
            for kernel in ("csr", "bsr"):
                found = [crossover(rows, case, batch, kernel, stat) for stat in ("median", "min")]
                text = " / ".join(f"{f:.0%} zeros" if f is not None else "never" for f in found)
                lines.append(f"- {case}, batch {batch}, {kernel}: {text}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lenet300", default=RUNS["lenet300"])
    parser.add_argument("--lenet5", default=RUNS["lenet5"])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "sparse_inference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in ("lenet300", "lenet5"):
        for model, source in pruned_lenets(name, getattr(args, name)):
            rows += model_rows(name, model, source, args.repeats)
            print(markdown(rows[-2:]), flush=True)
    rows += layer_rows(args.size, args.repeats)
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
