"""How deep structured pruning goes on other libraries' layers, against Torch-Pruning (issue 14).

    python bench/structured_depth.py [--models torchvision:convnext_tiny timm:efficientnet_b0 ...]

At 50% of channels, L1, local (the settings of ``bench/structured.py``), each model is pruned
by secateur and by Torch-Pruning in the same run; the table gives both parameter ratios and the
ops secateur could not follow (op, module, channels kept). Models are built untrained (no
downloads); parameter counts do not depend on the weights or the input size. Writes
``bench/results/structured_depth.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from secateur.structured import analyse, apply_plan, plan_pruning
from structured import RATIO, count_params, prune_torch_pruning, write_atomic

MODELS = [
    "torchvision:convnext_tiny", "torchvision:resnext50_32x4d", "torchvision:regnet_y_400mf",
    "timm:efficientnet_b0", "timm:mobilenetv3_large_100", "timm:regnety_008", "timm:convnext_atto",
    "timm:resnet50", "timm:resnext50_32x4d", "timm:resnetv2_50", "timm:ghostnet_100", "timm:efficientvit_b0",
]
SIZE = 96  # input side: enough for every model's strides, small for a quick trace


def build(name: str) -> nn.Module:
    """An untrained model from ``torchvision:NAME`` or ``timm:NAME`` (1000 classes)."""
    library, _, model = name.partition(":")
    if library == "timm":
        import timm

        return timm.create_model(model, pretrained=False).eval()
    import torchvision

    return torchvision.models.get_model(model, weights=None).eval()


def secateur_ratio(model: nn.Module, x: torch.Tensor) -> tuple[float, list[dict]]:
    before = count_params(model)
    graph = analyse(model, x)
    apply_plan(model, plan_pruning(model, graph, ratio=RATIO, method="l1", scope="local"), x)
    unfollowed = [{"op": u.op, "path": u.path, "channels": u.channels} for u in graph.unfollowed]
    return before / count_params(model), unfollowed


def bench_one(name: str) -> dict:
    base = build(name)
    x = torch.randn(1, 3, SIZE, SIZE)
    entry: dict = {"params": count_params(base)}
    start = time.perf_counter()
    try:
        entry["secateur"], entry["unfollowed"] = secateur_ratio(copy.deepcopy(base), x)
    except Exception as err:  # the benchmark records any failure and moves on
        entry["secateur_error"] = f"{type(err).__name__}: {str(err)[:200]}"
    entry["secateur_seconds"] = time.perf_counter() - start
    try:
        model = prune_torch_pruning(copy.deepcopy(base), x)[0]
        entry["torch_pruning"] = entry["params"] / count_params(model)
    except Exception as err:
        entry["torch_pruning_error"] = f"{type(err).__name__}: {str(err)[:200]}"
    return entry


def markdown(results: dict[str, dict]) -> str:
    rows = ["| model | params | secateur | Torch-Pruning | secateur / TP | ops not followed (channels kept) |",
            "|---|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        s, t = r.get("secateur"), r.get("torch_pruning")
        unf = ", ".join(f"{u['op']} in {u['path']} ({u['channels']})" for u in r.get("unfollowed", [])) or "none"
        rows.append(f"| {name} | {r['params'] / 1e6:.1f} M | {f'{s:.2f}x' if s else 'failed'} | "
                    f"{f'{t:.2f}x' if t else 'failed'} | {f'{s / t:.3f}' if s and t else '-'} | {unf} |")
    return (f"Parameter ratio at {RATIO:.0%} of channels, L1, local "
            "(`python bench/structured_depth.py`)\n\n" + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for name in args.models:
        results[name] = bench_one(name)
        print(name, {k: v for k, v in results[name].items() if k != "unfollowed"}, flush=True)
    out = Path(args.out)
    write_atomic(out / "structured_depth.json", json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    write_atomic(out / "structured_depth.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
