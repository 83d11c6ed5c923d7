"""Every granularity of the drop-bound search on one trained baseline: what each saves, at what cost.

For each granularity given, run ``secateur prune --from BASELINE --granularity G --max-drop P``
(its default method, every other setting at its default) and record parameters, MACs (dense and
nonzero), test error before and after, the validation drop and the wall time. Masks (``weight``,
``kernel``, ``n:m``) save nonzero parameters and MACs; ``neuron`` / ``channel`` shrink the
dense model itself.

    python bench/granularity_table.py --baseline runs/bench/lenet5/baseline [--granularities kernel,2:4]
                                      [--max-drop 0.1] [--out runs/bench-granularities]

Rows of granularities not run this time are kept from the existing JSON.
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
from secateur.search.config import PruneConfig

RESULTS = Path(__file__).resolve().parent / "results"


def run_granularity(granularity: str, args: argparse.Namespace) -> dict:
    """One granularity's run from the shared baseline, summarised as a table row."""
    out = args.out / granularity.replace(":", "-")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    res = prune_run(out=out, from_dir=args.baseline, config=PruneConfig(granularity=granularity,
                                                                        max_drop=args.max_drop),
                    progress=True).results
    error = {k: 100 * (1 - res[k]["test"]["accuracy"]) for k in ("baseline", "pruned")}
    macs = res["macs"]
    return {
        "granularity": granularity, "method": res["method"], "max_drop": args.max_drop,
        "params_before": res["params"]["baseline"], "params_total": res["params"]["total"],
        "params_nonzero": res["params"]["nonzero"], "compression": res["compression"],
        "macs_before": macs["baseline"], "macs_dense": macs["dense"], "macs_nonzero": macs["nonzero"],
        "mac_reduction": macs["baseline"] / max(macs["nonzero"], 1),
        "error_before": error["baseline"], "error_after": error["pruned"], "val_drop": res["drop"]["val"],
        "test_drop": res["drop"]["test"], "rounds": res["rounds"], "seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }


def markdown(rows: dict, model: str) -> str:
    """The results as a markdown table."""
    lines = [f"| {model}: granularity (method) | nonzero params | fewer params | fewer nonzero MACs | "
             "test error before → after | val drop | rounds | time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows.values():
        lines.append(f"| {r['granularity']} ({r['method']}) | {r['params_nonzero']:,} of {r['params_before']:,} | "
                     f"{r['compression']:.2f}x | {r['mac_reduction']:.2f}x | {r['error_before']:.2f}% → "
                     f"{r['error_after']:.2f}% | {r['val_drop']:+.2f} pts | {r['rounds']} | "
                     f"{r['seconds'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a trained baseline folder (secateur train)")
    parser.add_argument("--granularities", default="kernel,2:4", help="comma-separated (default kernel,2:4)")
    parser.add_argument("--max-drop", type=float, default=0.1, help="validation drop bound in points (default 0.1)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-granularities"))
    parser.add_argument("--json", type=Path, default=RESULTS / "granularities.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "granularities.md")
    args = parser.parse_args(argv)
    previous = json.loads(args.json.read_text()) if args.json.exists() else {}
    rows = dict(previous.get("rows", {}))
    model = rundir.read_model_meta(args.baseline)["model"]["name"]
    for granularity in [g.strip() for g in args.granularities.split(",") if g.strip()]:
        rows[granularity] = run_granularity(granularity, args)
        doc = {"model": model, "machine": f"torch {torch.__version__}", "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1, sort_keys=True))
        args.md.write_text(markdown(rows, model))
    print(markdown(rows, model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
