"""Deep Compression's storage table (Han et al., ICLR 2016) on secateur's pruned MNIST models.

For each pruned run folder (``secateur prune`` output, e.g. from ``bench/han_table.py``), the
chosen model is written as real ``compact`` files (:mod:`secateur.export.compact`) in three
stages, and each file is decoded back and evaluated on the test split:

1. pruning alone: the sparse format, values fp32 (bit-exact; also fp16 / bf16), no entropy coding;
2. + weight sharing: a per-layer codebook (k-means, linear init, centroids fine-tuned with masks
   fixed), at Han's widths (conv 8 / fc 5 bits) and lower; a width is kept only if the run's
   drop bound still holds on the validation split, by the search's own rule (paired margin);
3. + entropy coding: the same files with each codec (zlib, lzma, zstd, brotli, auto per section).

Sizes are bytes on disk against the dense fp32 file: the run's baseline exported with
``secateur export --format dense`` (a plain safetensors ``state_dict``; the run's own
``baseline/model.safetensors`` is larger, as it also holds the all-true masks of the search).
Rows of networks not run this time are kept from the existing JSON.
Prints the table beside the paper's rows, writes ``bench/results/deep_compression.{json,md}``
and the plot ``bytes_vs_drop.png``.

    python bench/deep_compression.py [--runs lenet300=runs/bench/lenet300/prune,lenet5=...]
                                     [--epochs 1] [--tune-images N] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import secateur  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from secateur.errors import ConfigError
from secateur.export import export_model
from secateur.export.codebook import share_weights
from secateur.export.compact import encode_model
from secateur.export.entropy import available_codecs
from secateur.io import rundir
from secateur.io.storage import load_model
from secateur.report.figures import png_bytes
from secateur.train import correctness
from secateur.unstructured.masks import effective_state_dict, masks_of
from secateur.zoo.data import Dataset, load_dataset

PAPER = {  # Deep Compression, Table 1: dense -> compressed storage, ratio, top-1 error after
    "lenet300": {"dense_kb": 1070, "compressed_kb": 27, "ratio": 40, "error": 1.58, "error_before": 1.64},
    "lenet5": {"dense_kb": 1720, "compressed_kb": 44, "ratio": 39, "error": 0.74, "error_before": 0.80},
}
DENSE_FILE = "the baseline as `secateur export --format dense` (plain fp32 safetensors)"
TARGET = {"lenet300": 40, "lenet5": 39}
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_RUNS = "lenet300=runs/bench/lenet300/prune,lenet5=runs/bench/lenet5/prune"
WIDER = (6, 7, 8)  # fc widths tried when Han's are refused
WIDTHS = ((8, 5), (8, 4), (8, 3), (6, 3), (8, 2), (5, 2), (4, 2))  # (conv bits, fc bits), Han's first


def paper_key(name: str) -> str:
    """``lenet300-d02`` -> ``lenet300``: the paper's row a run is compared with."""
    return name.split("-")[0]


def error_of(model: nn.Module, data: Dataset, split: str = "test") -> float:
    """Top-1 error in percent."""
    hits = correctness(model, data, split)
    return 100.0 * (1 - int(hits.sum()) / hits.numel())


def stored(model: nn.Module, work: Path, label: str, *, values: str = "fp32", codec: str = "none") -> tuple[int, Path]:
    """Write ``model`` as a compact file; (its bytes on disk, its path)."""
    data, _ = encode_model(model, values=values, codec_name=codec)
    path = work / f"{label}-{values}-{codec}.compact"
    path.write_bytes(data)
    return path.stat().st_size, path


def same_bits(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold the same tensors and masks, bit for bit."""
    ours, theirs = effective_state_dict(a), effective_state_dict(b)
    exact = ours.keys() == theirs.keys() and all(
        torch.equal(v.view(torch.uint8) if v.is_floating_point() else v,
                    theirs[k].view(torch.uint8) if v.is_floating_point() else theirs[k]) for k, v in ours.items())
    masks = masks_of(b)
    return exact and masks.keys() == masks_of(a).keys() and all(torch.equal(masks[k], v)
                                                                for k, v in masks_of(a).items())


def point(stage: str, label: str, size: int, path: Path, data: Dataset, base_error: float, dense: int,
          same_as: tuple[nn.Module, float] | None = None, **extra: object) -> dict:
    """One stored file, decoded from disk and evaluated on the test split (a file that decodes bit
    for bit to ``same_as``'s model takes its measured error)."""
    decoded, _ = load_model(path)
    known = same_as is not None and same_bits(decoded, same_as[0])
    error = same_as[1] if same_as is not None and known else error_of(decoded, data)
    return {"stage": stage, "label": label, "bytes": size, "ratio": dense / size, "test_error": error,
            "test_drop": error - base_error, **extra}


def pruning_points(model: nn.Module, data: Dataset, work: Path, base_error: float, dense: int) -> list[dict]:
    """Stage 1: the pruned model in the sparse format at each value precision, no entropy coding."""
    out = []
    for values in ("fp32", "fp16", "bf16"):
        size, path = stored(model, work, "pruned", values=values)
        out.append(point("pruning", values, size, path, data, base_error, dense, values=values))
    return out


def lossless(model: nn.Module, work: Path, nonzero: int) -> dict:
    """The fp32 file with the default codec (lzma): its bytes against ``4 * nonzero``, and bit-exactness."""
    size, path = stored(model, work, "pruned", codec="lzma")
    decoded, _ = load_model(path)
    exact = same_bits(model, decoded)
    return {"bytes": size, "codec": "lzma", "vs_nonzero_fp32_bytes": size / (4 * nonzero), "bit_exact": exact}


def widths_for(model: nn.Module, conv: int, fc: int) -> str:
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return f"conv:{conv},fc:{fc}" if has_conv else f"fc:{fc}"


def trial(model: nn.Module, bits: str, baseline: nn.Module, tune: Dataset, bound: dict, epochs: int) -> dict:
    """One width, fine-tuned and judged by the run's drop bound on validation."""
    start = time.perf_counter()
    try:
        shared, facts = share_weights(model, bits, data=tune, epochs=epochs, max_drop=bound["max_drop"],
                                      baseline=baseline, confidence=bound["confidence"])
    except ConfigError as refused:
        return {"bits": bits, "accepted": False, "why": str(refused), "seconds": time.perf_counter() - start}
    return {"bits": bits, "accepted": True, "model": shared, "val_drop": facts["drop"], "val_margin": facts["margin"],
            "seconds": time.perf_counter() - start}


def largest_weight(model: nn.Module) -> str:
    """The masked tensor with the most kept weights (fc1 of an MLP): where a bit saves the most."""
    return max(masks_of(model).items(), key=lambda item: int(item[1].sum()))[0]


def sharing_trials(model: nn.Module, baseline: nn.Module, data: Dataset, bound: dict, epochs: int,
                   tune_images: int | None) -> list[dict]:
    """Widths from Han's down to the first refused; then the last accepted with its largest layer
    one bit narrower, then two. Centroids fine-tuned on the first ``tune_images`` training images."""
    tune = data if tune_images is None else data.subset(train=tune_images)
    trials: list[dict] = []
    accepted = None
    for bits in dict.fromkeys(widths_for(model, conv, fc) for conv, fc in WIDTHS):
        trials.append(trial(model, bits, baseline, tune, bound, epochs))
        if not trials[-1]["accepted"]:
            break
        accepted = bits
    for fc in WIDER if accepted is None else ():  # Han's widths refused: wider fc codebooks, to the first accepted
        trials.append(trial(model, widths_for(model, 8, fc), baseline, tune, bound, epochs))
        if trials[-1]["accepted"]:
            accepted = trials[-1]["bits"]
            break
    if accepted is not None:
        largest = largest_weight(model)
        fc = int(accepted.rsplit(":", 1)[1])
        for narrower in (fc - 1, fc - 2):
            if narrower < 2:
                break
            trials.append(trial(model, f"{accepted},{largest}:{narrower}", baseline, tune, bound, epochs))
            if not trials[-1]["accepted"]:
                break
    return trials


def codecs() -> list[str]:
    """``none`` first, every installed codec, then ``auto`` (the smallest per section)."""
    return ["none", *(c for c in available_codecs() if c != "none"), "auto"]


def sharing_points(trials: list[dict], data: Dataset, work: Path, base_error: float, dense: int) -> list[dict]:
    """Stages 2 and 3 for every accepted width: no coding, then each codec."""
    out = []
    for done in (t for t in trials if t["accepted"]):
        tag = done["bits"].replace(":", "").replace(",", "-")
        measured: tuple[nn.Module, float] | None = None
        for codec in codecs():
            size, path = stored(done["model"], work, tag, codec=codec)
            stage = "pruning + weight sharing" if codec == "none" else "+ entropy coding"
            out.append(point(stage, f"{done['bits']} {codec}", size, path, data, base_error, dense, measured,
                             bits=done["bits"], codec=codec, val_drop=done["val_drop"],
                             val_margin=done["val_margin"]))
            if measured is None:
                measured = (load_model(path)[0], out[-1]["test_error"])
    return out


def bench_run(name: str, folder: Path, epochs: int, work: Path, tune_images: int | None = None) -> dict:
    """All stages for one pruned run folder."""
    config, results = rundir.read_config(folder), rundir.read_results(folder)
    bound = {"max_drop": float(config["prune"]["max_drop"]), "confidence": float(config["prune"]["confidence"])}
    data = load_dataset(str(config.get("dataset") or "mnist"))
    model, _ = load_model(rundir.checkpoint_in(folder))
    baseline, _ = load_model(rundir.checkpoint_in(rundir.baseline_dir(folder)))
    dense_file = work / f"{name}-baseline-dense.safetensors"  # the run's baseline/ copy also holds all-true masks
    dense = export_model(baseline, dense_file, "dense", force=True).bytes
    base_error = error_of(baseline, data)
    nonzero = sum(int(m.sum()) for m in masks_of(model).values())
    points = pruning_points(model, data, work, base_error, dense)
    trials = sharing_trials(model, baseline, data, bound, epochs, tune_images)
    points += sharing_points(trials, data, work, base_error, dense)
    best = min((p for p in points if p["stage"] == "+ entropy coding"), key=lambda p: p["bytes"], default=None)
    return {"network": name, "run": str(folder), "dense_file": DENSE_FILE, "dense_bytes": dense,
            "run_baseline_checkpoint_bytes": (rundir.baseline_dir(folder) / rundir.WEIGHTS).stat().st_size,
            "masked_checkpoint_bytes": (folder / rundir.WEIGHTS).stat().st_size, "nonzero_weights": nonzero,
            "compression_params": results["compression"], "max_drop": bound["max_drop"],
            "confidence": bound["confidence"], "baseline_test_error": base_error, "epochs": epochs,
            "tune_images": tune_images or len(data.train.labels),
            "trials": [{k: v for k, v in t.items() if k != "model"} for t in trials], "points": points, "best": best,
            "fp32_vs_nonzero_bytes": points[0]["bytes"] / (4 * nonzero), "lossless": lossless(model, work, nonzero)}


def table(runs: list[dict]) -> str:
    """The storage table, the paper's rows beside ours."""
    lines = ["| network | source | stage | top-1 error (test) | dense fp32 file | compressed file | ratio |",
             "|---|---|---|---|---|---|---|"]
    shown: set[str] = set()
    for run in runs:
        name, paper = run["network"], PAPER.get(paper_key(run["network"]))
        if paper and paper_key(name) not in shown:
            shown.add(paper_key(name))
            lines.append(f"| {paper_key(name)} | Deep Compression (Han et al. 2016) | prune + share + Huffman | "
                         f"{paper['error_before']:.2f}% -> {paper['error']:.2f}% | {paper['dense_kb']} KB | "
                         f"{paper['compressed_kb']} KB | {paper['ratio']}x |")
        rows = [run["points"][0]]
        sharing = [p for p in run["points"] if p["stage"] == "pruning + weight sharing"]
        if run["best"]:
            rows += [p for p in sharing if p["bits"] == run["best"]["bits"]] + [run["best"]]
        for p in rows:
            what = {"pruning": "pruning (fp32, bit-exact)", "pruning + weight sharing": f"+ sharing ({p.get('bits')})",
                    "+ entropy coding": f"+ entropy ({p.get('bits')}, {p.get('codec')})"}[p["stage"]]
            lines.append(f"| {name} | **secateur** (max-drop {run['max_drop']}) | {what} | "
                         f"{run['baseline_test_error']:.2f}% -> "
                         f"{p['test_error']:.2f}% | {run['dense_bytes'] / 1000:,.0f} KB | {p['bytes'] / 1000:,.1f} KB "
                         f"| **{p['ratio']:.1f}x** |")
    return "\n".join(lines)


def codec_table(runs: list[dict]) -> str:
    """Bytes of the chosen width under each codec."""
    lines = ["| network | bits | " + " | ".join(codecs()) + " |", "|---|---|" + "---|" * len(codecs())]
    for run in runs:
        if not run["best"]:
            continue
        bits = run["best"]["bits"]
        sizes = {p["codec"]: p["bytes"] for p in run["points"] if p.get("bits") == bits}
        lines.append(f"| {run['network']} | {bits} | " + " | ".join(f"{sizes.get(c, 0):,}" for c in codecs()) + " |")
    return "\n".join(lines)


def notes(runs: list[dict]) -> str:
    """Per network: the drop bound, the chosen width's drops, the targets, the lossless file."""
    lines = []
    for r in runs:
        best, lossless = r["best"], r["lossless"]
        lines.append(f"- {r['network']}: drop bound {r['max_drop']} points (confidence {r['confidence']}), "
                     f"dense fp32 file {r['dense_bytes']:,} bytes ({DENSE_FILE}); {r['nonzero_weights']:,} nonzero "
                     f"weights ({r['compression_params']:.1f}x fewer parameters).")
        lines.append(f"  - lossless (fp32, lzma): {lossless['bytes']:,} bytes = {lossless['vs_nonzero_fp32_bytes']:.3f}"
                     f" x (nonzeros x 4 bytes), bit-exact: {lossless['bit_exact']}.")
        if best is None:
            lines.append("  - no width was accepted within the bound.")
            continue
        target = TARGET.get(paper_key(r["network"]), 40)
        lines.append(f"  - chosen: {best['bits']} + {best['codec']}: {best['bytes']:,} bytes, {best['ratio']:.1f}x "
                     f"(target {target}x: {'met' if best['ratio'] >= target else 'MISSED'}); val drop "
                     f"{best['val_drop']:+.2f} + margin {best['val_margin']:.2f} points; test error "
                     f"{r['baseline_test_error']:.2f}% -> {best['test_error']:.2f}% ({best['test_drop']:+.2f} points, "
                     f"{'within' if best['test_drop'] <= r['max_drop'] + 1e-9 else 'OVER'} the bound on test).")
        refused = [t["bits"] for t in r["trials"] if not t["accepted"]]
        lines.append(f"  - widths tried: {', '.join(t['bits'] for t in r['trials'])}; refused on validation: "
                     f"{', '.join(refused) or 'none'}; centroid fine-tuning {r['epochs']} epoch(s) "
                     f"over {r['tune_images']:,} training images per width.")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    """Bytes on disk vs test accuracy drop, one panel per network, one series per stage."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(runs), 4.2))
    styles = {"pruning": ("o", "tab:blue"), "pruning + weight sharing": ("s", "tab:orange"),
              "+ entropy coding": ("^", "tab:green")}
    for index, run in enumerate(runs):
        ax = fig.add_subplot(1, len(runs), index + 1)
        for stage, (marker, color) in styles.items():
            pts = [p for p in run["points"] if p["stage"] == stage]
            ax.scatter([p["bytes"] / 1000 for p in pts], [p["test_drop"] for p in pts], marker=marker, color=color,
                       label=stage, alpha=0.8)
        target = TARGET.get(paper_key(run["network"]), 40)
        ax.axvline(run["dense_bytes"] / 1000 / target, color="grey", ls=":",
                   label=f"{target}x smaller than the dense file")
        ax.axhline(run["max_drop"], color="tab:red", ls="--", lw=1, label=f"drop bound ({run['max_drop']} pts)")
        for p in run["points"]:
            if p["stage"] == "pruning + weight sharing" or p["stage"] == "pruning":
                ax.annotate(p.get("bits") or p["label"], (p["bytes"] / 1000, p["test_drop"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("file size on disk (KB, log)")
        ax.set_ylabel("test accuracy drop (points)")
        ax.set_title(f"{run['network']}: dense fp32 file {run['dense_bytes'] / 1000:,.0f} KB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.write_bytes(png_bytes(fig))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="name=run folder, comma separated")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of centroid fine-tuning per width")
    parser.add_argument("--drop", default="", help="networks to remove from the existing JSON, comma separated")
    parser.add_argument("--tune-images", type=int, default=None,
                        help="fine-tune the centroids on the first N training images (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="where the compact files go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=RESULTS / "deep_compression.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "deep_compression.md")
    parser.add_argument("--png", type=Path, default=RESULTS / "bytes_vs_drop.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        for pair in filter(None, args.runs.split(",")):  # --runs "": re-render the tables and plot from the JSON
            name, folder = pair.split("=", 1)
            start = time.perf_counter()
            run = bench_run(name, Path(folder), args.epochs, work, args.tune_images)
            run["seconds"] = time.perf_counter() - start
            runs.append(run)
            print(f"{name}: done in {run['seconds']:.0f} s", flush=True)
    if args.json.exists():  # rows of networks not run this time are kept, as bench/han_table.py does
        ran = {r["network"] for r in runs}
        kept = [r for r in json.loads(args.json.read_text()) if r["network"] not in ran | set(args.drop.split(","))]
        runs = sorted(kept + runs, key=lambda r: r["network"])
    text = "\n\n".join([table(runs), "Bytes of the chosen width under each codec:", codec_table(runs),
                         notes(runs)])
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(runs, indent=2) + "\n")
    args.md.write_text(text + "\n")
    plot(runs, args.png)


if __name__ == "__main__":
    main()
