"""Benchmark: 50% channel pruning (L1, local) of torchvision classifiers, secateur vs Torch-Pruning.

For every model: whether each tool succeeds (or why not), parameters and MACs before/after,
seconds to analyse (dependency graph) and to prune (score + surgery), CPU latency before/after
at batch 1 and 32 (median of repeats, 224x224 or the model's own size), and the measured
speedup divided by the MAC ratio. Torch-Pruning (``pip install torch-pruning``, the ``bench``
extra) is the peer; when it is missing its entries say so.

    python bench/structured.py [--models a,b,c | --models all] [--json FILE] [--md FILE]
                               [--no-latency] [--repeats N]

The JSON maps each model name to ``{"secateur": {...}, "torch_pruning": {...}}``; a markdown
table is printed (and written with ``--md``). Models run one at a time, each tool in its own
process that is stopped past ``--timeout`` seconds or ``--max-gb`` of memory (recorded as a
failure); results are written after each model, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from secateur.analysis.metrics import count_macs, count_params
from secateur.structured import analyse, apply_plan, plan_pruning

DEFAULT_MODELS = ["resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121",
                  "efficientnet_b0", "regnet_x_400mf"]
INPUT_SIZE = {"inception_v3": 299}
RATIO = 0.5


def all_models() -> list[str]:
    """Every torchvision classification model name."""
    return torchvision.models.list_models(module=torchvision.models)


def input_shape(name: str) -> tuple[int, int, int]:
    size = INPUT_SIZE.get(name, 224)
    return (3, size, size)


def latency(model: nn.Module, shape: tuple[int, ...], batch: int, repeats: int) -> float:
    """Median seconds of an eval-mode, inference-mode forward of a random batch."""
    x = torch.randn(batch, *shape)
    model.eval()
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers producing the class scores (Torch-Pruning must be told to keep them)."""
    return [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]


def prune_secateur(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, float, float]:
    start = time.perf_counter()
    graph = analyse(model, x)
    analysed = time.perf_counter()
    plan = plan_pruning(model, graph, ratio=RATIO, method="l1", scope="local")
    apply_plan(model, plan)
    return model, analysed - start, time.perf_counter() - analysed


def prune_torch_pruning(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, float, float]:
    import torch_pruning as tp

    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO,
        global_pruning=False, ignored_layers=classifier_layers(model, 1000))
    analysed = time.perf_counter()
    pruner.step()
    return model, analysed - start, time.perf_counter() - analysed


PRUNERS: dict[str, Callable[[nn.Module, torch.Tensor], tuple[nn.Module, float, float]]] = {
    "secateur": prune_secateur,
    "torch_pruning": prune_torch_pruning,
}


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


def run_one(tool: str, base: nn.Module, name: str, before: dict, args: argparse.Namespace) -> dict:
    """Prune ``base`` (in place) with ``tool`` and measure it; failures become ``ok: False``."""
    shape = input_shape(name)
    entry: dict[str, Any] = {"ok": False, "error": None, **before}
    try:
        model, t_analyse, t_prune = PRUNERS[tool](base, torch.randn(1, *shape))
        entry.update(analyse_seconds=t_analyse, prune_seconds=t_prune)
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, *shape))
        if tuple(out.shape) != (2, 1000):
            raise RuntimeError(f"pruned model outputs shape {tuple(out.shape)}, expected (2, 1000)")
        entry.update(params_after=count_params(model), macs_after=count_macs(model, shape))
        if entry["params_after"] >= entry["params_before"]:
            raise RuntimeError("nothing was pruned")
        if not args.no_latency:
            entry.update(latency_b1_after=latency(model, shape, 1, args.repeats),
                         latency_b32_after=latency(model, shape, 32, args.repeats))
        entry["ok"] = True
    except Exception as err:  # the benchmark records any failure and moves on
        entry["error"] = first_line(err)
    _ratios(entry)
    return entry


def _ratios(entry: dict) -> None:
    if entry.get("macs_after"):
        entry["mac_ratio"] = entry["macs_before"] / entry["macs_after"]
    for b in ("b1", "b32"):
        if entry.get(f"latency_{b}_after") and entry.get("mac_ratio"):
            speedup = entry[f"latency_{b}_before"] / entry[f"latency_{b}_after"]
            entry[f"speedup_{b}"] = speedup
            entry[f"speedup_{b}_over_mac_ratio"] = speedup / entry["mac_ratio"]


def _child(name: str, tool: str, before: dict, args: argparse.Namespace, conn: Any) -> None:
    """Subprocess body: build the model again (same seed) and prune it with ``tool``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = torchvision.models.get_model(name, weights=None).eval()
    conn.send(run_one(tool, base, name, before, args))
    conn.close()


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_isolated(name: str, tool: str, before: dict, args: argparse.Namespace) -> dict:
    """``run_one`` in a fresh process, killed past ``--timeout`` seconds or ``--max-gb`` of memory."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, tool, before, args, send), daemon=True)
    proc.start()
    send.close()
    start, limit = time.perf_counter(), args.max_gb * 2**30
    why = None
    while not recv.poll(0.5):
        if not proc.is_alive():
            why = f"worker died (exit code {proc.exitcode})"
            break
        if time.perf_counter() - start > args.timeout:
            why = f"gave up after {args.timeout:.0f} s"
            break
        if _rss_bytes(proc.pid) > limit:
            why = f"gave up above {args.max_gb:g} GB of memory"
            break
    result = None if why else recv.recv()
    proc.kill()
    proc.join()
    return result or {"ok": False, "error": why, **before}


def bench_model(name: str, args: argparse.Namespace) -> dict:
    """Both tools on one model, each in its own process."""
    torch.manual_seed(0)
    shape = input_shape(name)
    try:
        base = torchvision.models.get_model(name, weights=None).eval()
        before = {"params_before": count_params(base), "macs_before": count_macs(base, shape)}
        if not args.no_latency:
            before.update(latency_b1_before=latency(base, shape, 1, args.repeats),
                          latency_b32_before=latency(base, shape, 32, args.repeats))
    except Exception as err:
        failed = {"ok": False, "error": f"could not build or measure: {first_line(err)}"}
        return {tool: dict(failed) for tool in PRUNERS}
    del base
    gc.collect()
    return {tool: run_isolated(name, tool, before, args) for tool in PRUNERS}


def _fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{v / scale:.{digits}f}"


def markdown(results: dict[str, dict], args: argparse.Namespace) -> str:
    """A markdown summary: coverage, analyse time, sizes and speedups per model."""
    head = ("| model | secateur | torch-pruning | params M before | after (sec / tp) | GMACs before | "
            "after (sec / tp) | analyse s (sec / tp) | b32 speedup / MAC ratio (sec / tp) | error |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        s, t = r["secateur"], r["torch_pruning"]
        err = "; ".join(f"{k}: {v['error']}" for k, v in (("sec", s), ("tp", t)) if v.get("error"))
        lines.append(
            f"| {name} | {'ok' if s['ok'] else 'FAIL'} | {'ok' if t['ok'] else 'FAIL'} | "
            f"{_fmt(s.get('params_before'), 1e6)} | "
            f"{_fmt(s.get('params_after'), 1e6)} / {_fmt(t.get('params_after'), 1e6)} | "
            f"{_fmt(s.get('macs_before'), 1e9)} | "
            f"{_fmt(s.get('macs_after'), 1e9)} / {_fmt(t.get('macs_after'), 1e9)} | "
            f"{_fmt(s.get('analyse_seconds'))} / {_fmt(t.get('analyse_seconds'))} | "
            f"{_fmt(s.get('speedup_b32_over_mac_ratio'))} / {_fmt(t.get('speedup_b32_over_mac_ratio'))} | "
            f"{err.replace('|', '/')[:160]} |")
    return "\n".join([_summary(results, args), "", *lines, ""])


def _summary(results: dict[str, dict], args: argparse.Namespace) -> str:
    ok_s = sum(r["secateur"]["ok"] for r in results.values())
    ok_t = sum(r["torch_pruning"]["ok"] for r in results.values())
    both = [r for r in results.values() if r["secateur"]["ok"] and r["torch_pruning"]["ok"]]
    sec_t = sum(r["secateur"]["analyse_seconds"] for r in both)
    tp_t = sum(r["torch_pruning"]["analyse_seconds"] for r in both)
    latency = "skipped" if args.no_latency else f"median of {args.repeats}"
    return (f"# Structured pruning benchmark ({RATIO:.0%} channels, L1, local)\n\n"
            f"- command: `python bench/structured.py {' '.join(sys.argv[1:])}`\n"
            f"- torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.machine()}, "
            f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, latency {latency}\n"
            f"- models handled: secateur {ok_s}/{len(results)}, torch-pruning {ok_t}/{len(results)}\n"
            f"- total analyse seconds on the {len(both)} models both handle: secateur {sec_t:.2f}, "
            f"torch-pruning {tp_t:.2f}")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated torchvision names, or 'all' (default: the issue's named models)")
    parser.add_argument("--json", type=Path, help="write results JSON here")
    parser.add_argument("--md", type=Path, help="write the markdown table here")
    parser.add_argument("--no-latency", action="store_true", help="skip CPU latency measurements")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per latency (median)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model and tool before giving up")
    parser.add_argument("--max-gb", type=float, default=8, help="memory per model and tool before giving up")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = all_models() if args.models == "all" else [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(all_models()))
    if unknown:
        parser.error(f"unknown torchvision classification models: {', '.join(unknown)}")
    results: dict[str, dict] = {}
    for name in names:
        start = time.perf_counter()
        results[name] = bench_model(name, args)
        print(f"{name}: secateur {results[name]['secateur']['ok']}, torch-pruning "
              f"{results[name]['torch_pruning']['ok']} ({time.perf_counter() - start:.0f}s)",
              file=sys.stderr, flush=True)
        if args.json:
            write_atomic(args.json, json.dumps(results, indent=1))
        if args.md:
            write_atomic(args.md, markdown(results, args))
    print(markdown(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
