"""``make demo``: a one-minute, offline tour of secateur on scikit-learn's bundled digits.

Trains LeNet-300-100 (sized for 8x8 inputs), prunes it with Han et al.'s method under a
2-point validation drop bound (200 validation images: 1 point is 2 images), then removes whole
neurons from the same dense model under the same bound, and writes both run folders with
their reports. No network.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import secateur
from secateur.io import rundir


def _table(result: secateur.PruneResult) -> Table:
    res = result.results
    table = Table(title="LeNet-300-100 on digits: dense vs pruned (Han et al., drop bound 2 points)")
    for column in ("", "dense", "pruned"):
        table.add_column(column, justify="right")
    table.add_row("val accuracy", f"{100 * res['baseline']['val']['accuracy']:.2f}%",
                  f"{100 * res['pruned']['val']['accuracy']:.2f}%")
    table.add_row("test accuracy", f"{100 * res['baseline']['test']['accuracy']:.2f}%",
                  f"{100 * res['pruned']['test']['accuracy']:.2f}%")
    table.add_row("nonzero parameters", f"{res['params']['baseline']:,}", f"{res['params']['nonzero']:,}")
    table.add_row("MACs (nonzero)", f"{res['macs']['baseline']:,}", f"{res['macs']['nonzero']:,}")
    table.add_row("compression", "1.0x", f"{res['compression']:.1f}x")
    for layer in res["layers"]:
        table.add_row(f"{layer['name']} kept", "100%", f"{100 * layer['kept']:.1f}%")
    return table


def _neurons_line(result: secateur.PruneResult) -> str:
    res = result.results
    kept = ", ".join(f"{name} {c['after']}/{c['before']}" for name, c in res["channels"].items())
    latency = res["latency"]
    return (f"   neurons kept: {kept}; {res['params']['baseline']:,} -> {res['params']['total']:,} parameters "
            f"(a dense model {res['compression']:.1f}x smaller), test accuracy "
            f"{100 * res['baseline']['test']['accuracy']:.2f}% -> {100 * res['pruned']['test']['accuracy']:.2f}%, "
            f"batch-32 CPU latency {1e3 * latency['b32_before']:.3f} -> {1e3 * latency['b32_after']:.3f} ms")


def main(out: str | Path | None = None) -> tuple[secateur.PruneResult, secateur.PruneResult]:
    """Run the demo and print what it did; returns the weight- and neuron-pruning results."""
    console = Console()
    out = Path(out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    data = secateur.load_dataset("digits")
    console.print(f"[bold]1. train[/] LeNet-300-100 on digits ({len(data.train)} train / "
                  f"{len(data.val)} val / {len(data.test)} test images, 8x8)")
    torch.manual_seed(0)
    model = secateur.build_model("lenet300", input_shape=data.input_shape)
    recipe = secateur.TrainConfig(epochs=40, lr=0.05, batch_size=32, weight_decay=1e-4)
    secateur.fit(model, data, recipe, progress=True)
    console.print("[bold]2. prune[/] with method='han', schedule='iterative', max_drop=2.0 points")
    meta = {"model": {"name": "lenet300", "args": {"input_shape": list(data.input_shape), "num_classes": 10}},
            "dataset": "digits"}
    result = secateur.prune(model, data=data, method="han", max_drop=2.0, rounds=8, retrain_epochs=6,
                            train_config=recipe, out=out, progress=True, meta=meta)
    console.print(_table(result))
    console.print("[bold]3. remove neurons[/] from the same dense model: granularity='neuron', max_drop=2.0")
    neurons_out = out.with_name(out.name + "-neurons")
    neurons = secateur.prune(model, data=data, granularity="neuron", max_drop=2.0, rounds=8, retrain_epochs=6,
                             train_config=recipe, out=neurons_out, progress=True, meta=meta)
    console.print(_neurons_line(neurons))
    reports = rundir.report_paths(out)["html"], rundir.report_paths(neurons_out)["html"]
    console.print(f"[bold]4. reports[/]: {reports[0]} and {reports[1]}")
    console.print(f"   reload them with: secateur info {out}  /  secateur info {neurons_out}")
    return result, neurons


if __name__ == "__main__":
    main()
