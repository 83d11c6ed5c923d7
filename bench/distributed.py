"""Wall time of one short pruning run under torchrun (2 ranks) beside the same run in one process.

Runs, back to back, each under ``nice``, the same command line:

    secateur prune --model lenet300 --max-drop 0.1 --epochs 2 --rounds 3 --retrain-epochs 1 --polish-epochs 1

(a 2-epoch baseline on all of MNIST's 55,000 training images, then 3 rounds of 1-epoch retraining and a
1-epoch polish) as

- one process with 1 torch thread, and with 2 threads (all of this machine's cores);
- ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m secateur prune ...`` (2 ranks of
  1 thread each, gloo): each rank trains on half of every epoch.

It records wall time, the machine's load average around each run (it is shared: the numbers are
noisy), compression and test error, and writes ``bench/results/distributed.{json,md}``.

    SECATEUR_DATA=/path/holding/mnist python bench/distributed.py [--out runs/bench-distributed]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
PRUNE = ["prune", "--model", "lenet300", "--max-drop", "0.1", "--epochs", "2", "--rounds", "3",
         "--retrain-epochs", "1", "--polish-epochs", "1", "--quiet"]
CONFIGS = (  # (name, processes, threads per process), in the order they run
    ("1 process, 2 threads", 1, 2),
    ("torchrun, 2 ranks x 1 thread", 2, 1),
    ("1 process, 1 thread", 1, 1),
)


def command(processes: int, out: Path) -> list[str]:
    """The command line of one configuration."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    return ["nice", "-n", "5", sys.executable, *(launcher if processes > 1 else []), "-m", "secateur",
            *PRUNE, "--out", str(out)]


def run(name: str, processes: int, threads: int, root: Path) -> dict:
    """One configuration, timed; its results.json summarised."""
    out = root / name.split(",")[0].replace(" ", "-") / f"{processes}x{threads}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    load_before, start = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run(command(processes, out), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    baseline = json.loads((out / "baseline" / "model.json").read_text())
    return {"name": name, "processes": processes, "threads": threads, "seconds": seconds,
            "baseline_train_seconds": baseline["train_seconds"], "prune_seconds": results["seconds"],
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "compression": results["compression"], "rounds": results["rounds"],
            "error_before": 100 * (1 - results["baseline"]["test"]["accuracy"]),
            "error_after": 100 * (1 - results["pruned"]["test"]["accuracy"]), "val_drop": results["drop"]["val"]}


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table, times as ratios to the 1-process, 2-thread run."""
    reference = rows[0]["seconds"]
    lines = ["| `secateur prune --model lenet300 --max-drop 0.1`, short budget | wall time | vs 1 process, 2 threads "
             "| baseline / search | load avg before → after | compression | test error before → after |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['seconds']:.0f} s | {reference / r['seconds']:.2f}x | "
                     f"{r['baseline_train_seconds']:.0f} s / {r['prune_seconds']:.0f} s | "
                     f"{r['load_before']:.1f} → {r['load_after']:.1f} | {r['compression']:.1f}x | "
                     f"{r['error_before']:.2f}% → {r['error_after']:.2f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-distributed"))
    args = parser.parse_args()
    rows = [run(name, processes, threads, args.out) for name, processes, threads in CONFIGS]
    table = markdown(rows)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.json").write_text(json.dumps({"command": PRUNE, "rows": rows}, indent=2) + "\n")
    (RESULTS / "distributed.md").write_text(table)


if __name__ == "__main__":
    main()
