"""Learned sparsity on the LeNets: Sparse VD (and L0 gates) alone, and under secateur's drop bound.

For each network: the baseline with secateur's default recipe (trained once, or reused from
``--out``), then

- ``paper``: the method alone, as its paper prunes (Sparse VD: the variational training phase
  from the baseline, then the weights with log alpha > 3 zeroed; no retraining);
- ``bound``: ``secateur prune --method sparse-vd --max-drop 0.1`` (the same phase, then the
  search, retraining and polish, the rounds starting from the learned means);
- ``order``: ``--method sparse-vd-order`` (the phase's log alpha order on the baseline's weights);
- ``l0`` : ``secateur prune --granularity neuron|channel --method l0 --max-drop 0.1``;
- ``retrain``: the Sparse VD phase (saved in ``--out``, reused by a later run with the same settings),
  cut in log alpha order to each ``--targets`` compression, then trained with the masks fixed for
  ``--retrain-epochs`` epochs of the baseline recipe (learning rate x ``--retrain-lr-factor``): the
  errors without and with that retraining.

The papers' rows are printed beside as reference. Epochs of the learned phase are fewer than
the papers' 200 on this 2-core CPU (``--learn-epochs``; stated in the table).

    python bench/learned.py [--models lenet300,lenet5] [--parts paper,bound,l0] [--learn-epochs 30] [--learn-penalty 1]
                            [--max-drop 0.1] [--scope local]
                            [--targets 40,68] [--retrain-epochs 10] [--retrain-lr-factor 0.5] [--distill 0]
                            [--out /work/bench-runs/learned] [--baselines DIR] [--short] [--json FILE] [--md FILE]

Parts may run as separate processes on the same ``--out`` (each merges its rows into the JSON).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur.analysis.metrics import count_params
from secateur.app.pipeline import load_baseline, prune_run
from secateur.io import rundir
from secateur.search.config import PruneConfig
from secateur.search.orchestrator import learning_trainer
from secateur.search.pruner import Learned, Step, Trainer, start_from
from secateur.train import distill_step, evaluate, fit, frozen_teacher
from secateur.unstructured.masks import apply_masks, prunable_names
from secateur.unstructured.methods import keep_largest_globally
from secateur.unstructured.variational import THRESHOLD, learn_sparse_vd, threshold_masks
from secateur.zoo.baseline import train_baseline
from secateur.zoo.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"
PAPERS = {  # published (compression, test error %) and their dense error
    "lenet300": {"dense": 1.64, "Sparse VD 2017": (68, 1.92), "DNS 2016": (56, 1.99), "Han 2015": (12, 1.59),
                 "L0 2018 (neurons 219-214-100)": (None, 1.4)},
    "lenet5": {"dense": 0.80, "Sparse VD 2017": (280, 0.75), "DNS 2016": (111, 0.91), "Han 2015": (12, 0.77),
               "L0-sep 2018 (9-18-65-25)": (None, 1.0)},
}
STRUCTURED = {"lenet300": "neuron", "lenet5": "channel"}
SHORT = {"retrain_epochs": 1, "rounds": 10, "polish_epochs": 5}  # --short: the search's budget on a busy CPU


def baseline_of(name: str, data, out: Path, baselines: Path | None) -> Path:
    """The baseline's folder: ``baselines/NAME/baseline`` (read only) if given, else under ``out``, trained
    there first if it is not yet."""
    if baselines is not None:
        return baselines / name / "baseline"
    folder = out / name / "baseline"
    if not rundir.has_checkpoint(folder):
        train_baseline(name, data, out=folder, progress=False)
    return folder


def compression(model: nn.Module) -> float:
    """All parameters / nonzero parameters (masks folded), as secateur's results count them."""
    return count_params(model) / max(1, count_params(model, nonzero=True))


def learned_phase(name: str, data, folder: Path, out: Path, epochs: int, penalty: float = 1.0
                  ) -> tuple[Learned, float]:
    """The Sparse VD phase from the baseline in ``folder`` and its seconds: read from
    ``out/NAME/sparse-vd-eE[-pP]`` when a run with the same settings kept it there (the run folder's
    own ``state/learned.*`` files), else run and kept."""
    saved = out / name / f"sparse-vd-e{epochs}" f"{f'-p{penalty:g}' if penalty != 1.0 else ''}"
    loaded = load_baseline(folder)
    model = loaded.model
    key = {"method": "sparse-vd", "epochs": epochs, "penalty": penalty, "baseline": rundir.weights_sha256(model)}
    kept = rundir.load_learned(saved, key)
    if kept is not None:
        weights, scores, info = kept
        return Learned(weights, scores, {k: v for k, v in info.items() if k != "seconds"}), info["seconds"]
    start = time.perf_counter()
    trainer = logged(learning_trainer(data, loaded.train_config,
                                      PruneConfig(method="sparse-vd", learn_epochs=epochs, learn_penalty=penalty)),
                     name)
    learned = learn_sparse_vd(model, tuple(prunable_names(model)), trainer)
    seconds = time.perf_counter() - start
    rundir.save_learned(saved, key, learned.weights, learned.scores, {**learned.info, "seconds": seconds})
    return learned, seconds


def paper_row(name: str, data, folder: Path, out: Path, epochs: int, penalty: float = 1.0) -> dict:
    """Sparse VD alone: the phase from the baseline, log alpha > 3 zeroed, no retraining."""
    model = load_baseline(folder).model
    learned, seconds = learned_phase(name, data, folder, out, epochs, penalty)
    pruned = copy.deepcopy(model)
    start_from(pruned, learned, {})
    apply_masks(pruned, threshold_masks(learned))
    return {"method": "sparse-vd (log alpha > 3, no retraining)" + _penalty(penalty), "network": name, "epochs": epochs,
            "compression": compression(pruned), **_errors(model, pruned, data), "seconds": seconds}


def level_for(model: nn.Module, learned: Learned, target: float) -> float:
    """The global sparsity of the learned targets at which the whole model is ``target`` x compressed
    (parameters outside the targets, e.g. biases, all kept)."""
    total = count_params(model)
    prunable = sum(s.numel() for s in learned.scores.values())
    kept = max(1.0, total / target - (total - prunable))
    return 1.0 - kept / prunable


def retrain_rows(name: str, data, folder: Path, out: Path, epochs: int, penalty: float, targets: list[float],
                 retrain_epochs: int, lr_factor: float, distill: float = 0.0) -> list[tuple[str, dict]]:
    """Sparse VD cut to each target compression in log alpha order, from the learned means, then
    trained ``retrain_epochs`` with the masks fixed (the baseline recipe, lr x ``lr_factor``; with
    ``distill`` > 0 that share of the loss is the dense baseline's softened outputs, temperature 4)."""
    loaded = load_baseline(folder)
    learned, seconds = learned_phase(name, data, folder, out, epochs, penalty)
    at_threshold = count_params(loaded.model) / (count_params(loaded.model) - learned.info["weights"]
                                                 + learned.info["kept_at_threshold"])
    rows = []
    for target in [at_threshold, *targets]:
        pruned = copy.deepcopy(loaded.model)
        start_from(pruned, learned, {})
        apply_masks(pruned, keep_largest_globally(learned.scores, level_for(pruned, learned, target)))
        cut = _errors(loaded.model, pruned, data)
        start = time.perf_counter()
        recipe = loaded.train_config.replace(epochs=retrain_epochs, lr=loaded.train_config.lr * lr_factor)
        step = (functools.partial(distill_step, teacher=frozen_teacher(loaded.model), weight=distill, temperature=4.0)
                if distill > 0 else None)
        fit(pruned, data, recipe, step=step, progress=False)
        label = f"log alpha > {THRESHOLD:g}" if target is at_threshold else f"{target:g}x in log alpha order"
        row = {"method": f"sparse-vd ({label}, then {retrain_epochs} epochs retrained with the masks, "
                         f"lr x {lr_factor:g}{f', distilled {distill:g}' if distill else ''})" + _penalty(penalty),
               "network": name, "epochs": epochs, "compression": compression(pruned), **_errors(loaded.model, pruned,
                                                                                                data),
               "cut": {k.replace("_after", ""): v for k, v in cut.items() if k.endswith("_after")},
               "seconds": seconds + time.perf_counter() - start}
        key = (f"{name}/retrain-{'threshold' if target is at_threshold else f'{target:g}x'}"
               + (f"-e{epochs}" if epochs != 200 else "") + (f"-r{retrain_epochs}" if retrain_epochs != 10 else "")
               + (f"-kd{distill:g}" if distill else "")
               + _variant(penalty, 0.1, "local"))
        print(f"{key}: {row['compression']:.1f}x, test {row['test_error_after']:.2f}% "
              f"(cut only: {row['cut']['test_error']:.2f}%)", flush=True)
        rows.append((key, row))
    return rows


def logged(trainer: Trainer, name: str) -> Trainer:
    """``trainer`` printing a line every 500 steps (steps and seconds so far): a long phase shows its pace."""
    def fit(model: nn.Module, step: Step, changes: dict) -> None:
        count, start = [0], time.perf_counter()

        def counted(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            count[0] += 1
            if count[0] % 500 == 0:
                print(f"{name}: {count[0]} steps, {time.perf_counter() - start:.0f} s", flush=True)
            return step(m, x, y)

        trainer.fit(model, counted, changes)

    return dataclasses.replace(trainer, fit=fit)


def _errors(before: nn.Module, after: nn.Module, data) -> dict:
    return {f"{split}_error_{when}": 100 * (1 - evaluate(m, data, split))
            for split in ("val", "test") for when, m in (("before", before), ("after", after))}


def _penalty(penalty: float) -> str:
    return f" --learn-penalty {penalty:g}" if penalty != 1.0 else ""


def _variant(penalty: float, max_drop: float, scope: str) -> str:
    """The suffix of a run's folder and row key for settings other than the defaults ("" for none)."""
    return ((f"-p{penalty:g}" if penalty != 1.0 else "") + (f"-d{max_drop:g}" if max_drop != 0.1 else "")
            + (f"-{scope}" if scope != "local" else ""))


def bound_row(name: str, data, folder: Path, out: Path, epochs: int, part: str, short: bool,
              penalty: float = 1.0, max_drop: float = 0.1, scope: str = "local") -> dict:
    """``secateur prune --method sparse-vd`` (or l0 on neurons / channels, ``scope``) within ``max_drop`` points."""
    options = ({"method": "sparse-vd"} if part == "bound" else {"method": "sparse-vd-order"} if part == "order" else
               {"method": "l0", "granularity": STRUCTURED[name], **({"scope": scope} if scope != "local" else {})})
    config = PruneConfig(max_drop=max_drop, learn_epochs=epochs, learn_penalty=penalty, **options,
                         **(SHORT if short else {}))
    start = time.perf_counter()
    folder_name = part + ("-short" if short else "") + _variant(penalty, max_drop, scope)
    result = prune_run(out=out / name / folder_name, from_dir=folder, dataset=data.name, config=config, force=True,
                       progress=False)
    r = result.results

    def error(where: str, split: str) -> float:
        return 100 * (1 - r[where][split]["accuracy"])

    return {"method": f"secateur prune --method {options['method']}"
                      + (f" --granularity {options['granularity']}" if "granularity" in options else "")
                      + (f" --scope {scope}" if "scope" in options else "")
                      + f" --max-drop {max_drop:g}" + _penalty(penalty),
            "network": name, "epochs": epochs, "compression": r["compression"],
            "val_error_before": error("baseline", "val"), "val_error_after": error("pruned", "val"),
            "test_error_before": error("baseline", "test"), "test_error_after": error("pruned", "test"),
            "rounds": r["rounds"], "seconds": time.perf_counter() - start, "budget": SHORT if short else "default",
            "layers": {row["name"]: row.get("kept") for row in r.get("layers", [])},
            "params": r.get("params"), "macs": r.get("macs"), "learned": r.get("learned")}


def partial_row(name: str, data, folder: Path, out: Path, part: str, epochs: int) -> dict:
    """A ``bound`` / ``l0`` run stopped before its end (a deadline): its best round so far, measured from
    the round checkpoint (no polish); the history's rounds and times."""
    run = out / name / part  # its folder: the part's name, "-short" included
    history = rundir.read_history(run)
    baseline = load_baseline(folder).model
    best, _, _ = rundir.load_round(run, copy.deepcopy(baseline))
    method = {"bound": "sparse-vd", "order": "sparse-vd-order"}.get(part.removesuffix("-short"), "l0")
    return {"method": f"secateur prune --method {method} --max-drop 0.1 "
                      f"(stopped after {len(history)} rounds, best round so far, no polish)",
            "network": name, "epochs": epochs, "compression": compression(best) if method != "l0" else
            count_params(baseline) / max(1, count_params(best, nonzero=True)),
            **_errors(baseline, best, data), "rounds": len(history),
            "seconds": sum(row["seconds"] for row in history), "partial": True,
            "budget": SHORT if part.endswith("-short") else "default",
            "history": [{k: row[k] for k in ("round", "strength", "compression", "drop", "feasible")}
                        for row in history]}


def merge(path: Path, key: str, row: dict) -> dict:
    """Add ``row`` under ``key`` to the JSON at ``path`` (other processes' rows kept)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("rows", {})[key] = row
    data["papers"] = PAPERS
    data["machine"] = f"{torch.get_num_threads()} thread(s), shared 2-core CPU, torch {torch.__version__}"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
    return data


def table(data: dict) -> str:
    """The markdown table: secateur's rows, then the papers' as reference."""
    lines = ["| network | method | learn epochs | compression | val error before → after | "
             "test error before → after | test error, cut alone | wall time |", "|---|---|---|---|---|---|---|---|"]
    for row in data.get("rows", {}).values():
        budget = " (short budget)" if row.get("budget", "default") != "default" else ""
        cut = f"{row['cut']['test_error']:.2f}%" if "cut" in row else ""
        lines.append(f"| {row['network']} | {row['method']}{budget} | {row['epochs']} | {row['compression']:.1f}x | "
                     f"{row['val_error_before']:.2f}% → {row['val_error_after']:.2f}% | "
                     f"{row['test_error_before']:.2f}% → {row['test_error_after']:.2f}% | {cut} | "
                     f"{row['seconds']:.0f} s |")
    for network, rows in PAPERS.items():
        for paper, value in rows.items():
            if paper != "dense":
                shown = f"{value[0]}x" if value[0] else "(neurons)"
                lines.append(f"| {network} | {paper} (paper, 200 epochs) | | {shown} | | "
                             f"{rows['dense']:.2f}% → {value[1]:.2f}% | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300")
    parser.add_argument("--parts", default="paper,bound")
    parser.add_argument("--learn-epochs", type=int, default=30)
    parser.add_argument("--learn-penalty", type=float, default=1.0,
                        help="multiplier of the learned method's sparsity penalty (secateur's learn_penalty)")
    parser.add_argument("--max-drop", type=float, default=0.1, help="the bound of the bound / order / l0 parts")
    parser.add_argument("--scope", default="local", help="the l0 part's scope (local or global)")
    parser.add_argument("--targets", default="40,68",
                        help="the retrain part's compressions (comma-separated), beside log alpha > 3's")
    parser.add_argument("--retrain-epochs", type=int, default=10, help="the retrain part's epochs with the masks")
    parser.add_argument("--retrain-lr-factor", type=float, default=0.5,
                        help="the retrain part's learning rate as a share of the baseline recipe's")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="the retrain part's share of the dense baseline's soft targets in the loss")
    parser.add_argument("--out", type=Path, default=Path("/work/bench-runs/learned"))
    parser.add_argument("--baselines", type=Path, default=None,
                        help="reuse trained baselines in DIR/NAME/baseline (e.g. the Han table's), read only")
    parser.add_argument("--short", action="store_true", help=f"the search's budget shortened to {SHORT}")
    parser.add_argument("--partial", action="store_true",
                        help="report the best round so far of a bound / l0 run in --out that was stopped early")
    parser.add_argument("--json", type=Path, default=RESULTS / "learned.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "learned.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist")
    for name in args.models.split(","):
        folder = baseline_of(name, data, args.out, args.baselines)
        for part in args.parts.split(","):
            if part == "retrain":
                for key, row in retrain_rows(name, data, folder, args.out, args.learn_epochs, args.learn_penalty,
                                             [float(t) for t in args.targets.split(",")], args.retrain_epochs,
                                             args.retrain_lr_factor, args.distill):
                    merged = merge(args.json, key, row)
                args.md.write_text(table(merged))
                print(table(merged), flush=True)
                continue
            if args.partial:
                row = partial_row(name, data, folder, args.out, part, args.learn_epochs)
            elif part == "paper":
                row = paper_row(name, data, folder, args.out, args.learn_epochs, args.learn_penalty)
            else:
                row = bound_row(name, data, folder, args.out, args.learn_epochs, part, args.short,
                                args.learn_penalty, args.max_drop, args.scope)
            key = f"{name}/{part}" + ("-short" if args.short else "") + _variant(args.learn_penalty, args.max_drop,
                                                                                 args.scope)
            merged = merge(args.json, key, row)
            args.md.write_text(table(merged))
            print(table(merged), flush=True)


if __name__ == "__main__":
    main()
