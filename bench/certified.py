"""The certified drop bound on LeNet-300: does the test drop stay within the bound on new data?

For each dataset and seed: train a LeNet-300 baseline (a short recipe, stated in the table),
then ``secateur.prune(max_drop=M, certify=C, dense_control=True)`` with a short round budget.
Half the validation split (``certify``) is held out of the search and bounds the returned
model's drop once; the test set is only measured. The table shows the search-images drop, the
certified drop and its one-sided 95% upper bound, the test drop (all against the reference the
run used: the baseline or its dense control), compression and wall time; the target is a test
drop within ``max_drop`` in every run.

    nice -n 10 python bench/certified.py [--datasets mnist,fashion-mnist] [--seeds 0,1,2,3,4]
        [--max-drop 0.5] [--certify 0.5] [--baseline-epochs 8] [--rounds 5] [--polish-epochs 3]

Fashion-MNIST is read from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets``),
MNIST from ``$SECATEUR_DATA``. Rows are written to ``bench/results/certified.json`` as they finish.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur import TrainConfig, build_model, fit, load_dataset, prune

RESULTS = Path(__file__).resolve().parent / "results"


def run_one(dataset: str, seed: int, args: argparse.Namespace) -> dict:
    """One baseline and one certified prune run, summarised as a table row."""
    start = time.perf_counter()
    data = load_dataset(dataset, seed=seed)
    if args.train_subset:
        data = data.subset(train=args.train_subset)
    model = build_model("lenet300", input_shape=data.input_shape, num_classes=data.num_classes)
    recipe = TrainConfig(epochs=args.baseline_epochs, batch_size=64, lr=0.05, weight_decay=1e-4, seed=seed)
    fit(model, data, recipe, progress=False)
    trained = time.perf_counter() - start
    res = prune(model, data=data, train_config=recipe, max_drop=args.max_drop, certify=args.certify,
                dense_control=not args.no_control, confidence=args.confidence, rounds=args.rounds,
                retrain_epochs=args.retrain_epochs,
                polish_epochs=args.polish_epochs, seed=seed).results
    cert, drop = res["certification"], res["drop"]
    return {"dataset": dataset, "seed": seed, "baseline_test_error": 100 * (1 - res["baseline"]["test"]["accuracy"]),
            "reference": res["reference"]["used"], "val_drop": drop["val"], "certified_drop": drop["certified"],
            "certified_ucb": drop["certified_ucb"], "certified": cert["certified"], "tries": len(cert["candidates"]),
            "chosen_round": res["chosen_round"], "test_drop": drop["test"],
            "test_drop_vs_baseline": res["reference"]["drop_vs_baseline"]["test"],
            "within": drop["test"] <= args.max_drop + 1e-9, "compression": res["compression"],
            "search_images": cert["search_images"], "certify_images": cert["images"],
            "baseline_seconds": trained, "prune_seconds": res["seconds"], "seconds": time.perf_counter() - start,
            "message": cert["message"], "candidates": cert["candidates"]}


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """The markdown table, with the budget it ran under."""
    head = ("| dataset | seed | baseline test err | reference | val (search) drop | certified drop | "
            "certified 95% UCB | tries | test drop | test <= bound | compression | wall |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")

    def pts(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.2f}"

    lines = [f"| {r['dataset']} | {r['seed']} | {r['baseline_test_error']:.2f}% | {r['reference']} | "
             f"{pts(r['val_drop'])} | {pts(r['certified_drop'])} | "
             f"{pts(r['certified_ucb']) if r['certified'] else 'none certified'} | {r['tries']} | "
             f"{pts(r['test_drop'])} | "
             f"{'yes' if r['within'] else '**no**'} | {r['compression']:.1f}x | {r['seconds']:.0f} s |" for r in rows]
    passed = sum(r["within"] for r in rows)
    images = f"{args.train_subset:,} of 55,000" if getattr(args, "train_subset", None) else "all 55,000"
    budget = (f"LeNet-300, --max-drop {args.max_drop}, --certify {args.certify}, "
              f"--confidence {getattr(args, 'confidence', 0.5):g}"
              f"{'' if args.no_control else ', --dense-control'}; short budget: {images} training images "
              f"(validation 5,000: 2,500 search + 2,500 held out; test 10,000), baseline {args.baseline_epochs} "
              f"epochs (no augmentation), {args.rounds} rounds of {args.retrain_epochs} retraining epoch(s), "
              f"polish {args.polish_epochs} epochs; one thread, nice 10, 2-core CPU shared with other jobs")
    return (f"{budget}\n\n{head}" + "\n".join(lines) +
            f"\n\nTest drop within the bound in {passed} of {len(rows)} runs.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist,fashion-mnist")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--certify", type=float, default=0.5)
    parser.add_argument("--confidence", type=float, default=0.5,
                        help="the search's paired noise margin (z); near the certification's z, rounds that "
                             "pass are more likely to certify")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="train on the first N training images (val and test stay whole)")
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--retrain-epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--polish-epochs", type=int, default=3)
    parser.add_argument("--no-control", action="store_true", help="run without --dense-control")
    parser.add_argument("--name", default="certified", help="file stem under bench/results/")
    parser.add_argument("--merge", default=None, help="comma-separated stems of finished runs (e.g. one per "
                                                      "dataset, run in parallel) to join into --name's table")
    args = parser.parse_args()
    if args.merge:
        found = {(row["dataset"], row["seed"]): row for stem in reversed(args.merge.split(","))
                 if (RESULTS / f"{stem}.json").exists()
                 for row in json.loads((RESULTS / f"{stem}.json").read_text())["rows"]}
        rows = [found[key] for key in sorted(found, key=lambda k: (k[0] != "mnist", k))]  # first stem wins
        (RESULTS / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        (RESULTS / f"{args.name}.md").write_text(table(rows, args))
        print(table(rows, args))
        return
    torch.set_num_threads(1)
    rows: list[dict] = []
    for dataset in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_one(dataset, seed, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
            (RESULTS / f"{args.name}.md").write_text(table(rows, args))
    print(table(rows, args))


if __name__ == "__main__":
    main()
