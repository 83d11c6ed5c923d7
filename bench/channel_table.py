"""Structured pruning of the MNIST zoo under a drop bound: neurons and filters removed physically.

For each network: take the trained baseline (``--baselines DIR/<model>/baseline`` if present,
else train one with secateur's default recipe), run
``secateur prune --granularity channel --max-drop P`` (defaults otherwise), and record
parameters, MACs, test error, channels kept per layer and measured CPU latency before/after.

    python bench/channel_table.py [--models lenet5,lenet300] [--max-drop 0.2] [--baselines runs/bench]
                                  [--out runs/bench-channels] [--json FILE] [--md FILE]

Rows of models not run this time are kept from the existing JSON, so one model can be re-run alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur.app.pipeline import prune_run
from secateur.io import rundir
from secateur.search.orchestrator import PruneConfig
from secateur.zoo.baseline import train_baseline
from secateur.zoo.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"


def baseline_dir(name: str, data, baselines: Path, out: Path) -> tuple[Path, float | None]:
    """A trained baseline folder for ``name`` and the seconds spent training it (None: reused)."""
    existing = rundir.baseline_dir(baselines / name)
    if rundir.has_checkpoint(existing):
        return existing, None
    start = time.perf_counter()
    train_baseline(name, data, out=rundir.baseline_dir(out / name), progress=False)
    return rundir.baseline_dir(out / name), time.perf_counter() - start


def run_model(name: str, data, args: argparse.Namespace) -> dict:
    """One network's structured run, summarised as a table row."""
    shutil.rmtree(args.out / name / "prune", ignore_errors=True)
    base, train_seconds = baseline_dir(name, data, args.baselines, args.out)
    config = PruneConfig(granularity=args.granularity, max_drop=args.max_drop)
    res = prune_run(out=args.out / name / "prune", from_dir=base, dataset=data.name, config=config,
                    progress=True).results
    shutil.copy(args.out / name / "prune" / rundir.TRADEOFF_PNG, RESULTS / f"{name}_channels_tradeoff.png")
    error = {k: 100 * (1 - res[k]["test"]["accuracy"]) for k in ("baseline", "pruned")}
    return {
        "granularity": args.granularity, "method": res["method"], "max_drop": args.max_drop,
        "params_before": res["params"]["baseline"], "params_after": res["params"]["total"],
        "compression": res["compression"], "macs_before": res["macs"]["baseline"], "macs_after": res["macs"]["dense"],
        "mac_reduction": res["macs"]["baseline"] / res["macs"]["dense"],
        "error_before": error["baseline"], "error_after": error["pruned"], "val_drop": res["drop"]["val"],
        "channels": res["channels"], "latency": res["latency"], "rounds": res["rounds"],
        "prune_seconds": res["seconds"], "train_seconds": train_seconds,
    }


def markdown(rows: dict) -> str:
    """The results as a markdown table."""
    lines = ["| network | params before → after | fewer params | fewer MACs | test error before → after | "
             "val drop | kept channels | CPU latency b32 before → after | pruning time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for name, r in rows.items():
        kept = ", ".join(f"{layer} {c['after']}/{c['before']}" for layer, c in r["channels"].items()
                         if c["after"] != c["before"])
        lat = r["latency"]
        lines.append(f"| {name} ({r['granularity']}, {r['method']}) | {r['params_before']:,} → {r['params_after']:,} | "
                     f"{r['compression']:.1f}x | {r['mac_reduction']:.1f}x | {r['error_before']:.2f}% → "
                     f"{r['error_after']:.2f}% | {r['val_drop']:+.2f} pts | {kept} | "
                     f"{1e3 * lat['b32_before']:.2f} → {1e3 * lat['b32_after']:.2f} ms | "
                     f"{r['prune_seconds'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5", help="comma-separated zoo names (default lenet5)")
    parser.add_argument("--granularity", default="channel", choices=("neuron", "channel"))
    parser.add_argument("--max-drop", type=float, default=0.2, help="validation drop bound in points (default 0.2)")
    parser.add_argument("--baselines", type=Path, default=Path("runs/bench"), help="reuse DIR/<model>/baseline")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-channels"))
    parser.add_argument("--json", type=Path, default=RESULTS / "channels.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "channels.md")
    args = parser.parse_args(argv)
    data = load_dataset("mnist")
    previous = json.loads(args.json.read_text()) if args.json.exists() else {}
    rows = dict(previous.get("models", {}))
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows[name] = run_model(name, data, args)
    doc = {"machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}", "models": rows}
    args.json.write_text(json.dumps(doc, indent=1, sort_keys=True))
    args.md.write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
