"""Benchmark: 50% channel pruning (L1, local) of torchvision and timm classifiers, secateur vs Torch-Pruning.

Depth, not only success: for every model and tool, whether it succeeds (or why not), parameters
and MACs before/after and their ratios, seconds to analyse and to prune, optionally CPU latency;
what each tool kept and why (secateur: the share of output channels its analysis locked, its
notes and, where the analysis reports them, the ops it could not follow; both tools: the
conv / linear layers left unpruned); then a family table (median and minimum parameter ratio per
tool per family on the models both prune, and on how many secateur removes less than
Torch-Pruning). Torch-Pruning (``pip install torch-pruning``, the ``bench`` extra) is the peer;
timm models (``pip install timm``, also in ``bench``) are built through secateur's ``timm:<name>``.

    python bench/structured.py [--zoo torchvision,timm] [--models a,b | all] [--family vit,convnext]
                               [--json FILE] [--md FILE] [--update] [--no-latency] [--timeout S] [--max-gb G]

``--models`` takes names of the chosen zoos (``resnet18``, ``timm:resnet18``); without it each
zoo's default set runs (``all`` for torchvision: every classifier). Models run one at a time,
each tool in its own process that is stopped past ``--timeout`` seconds or ``--max-gb`` of
memory; any failure (build, trace, prune, forward, timeout) is recorded in the row and the run
goes on. Results are written after each model, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from secateur.analysis.metrics import count_macs, count_params
from secateur.structured import DependencyGraph, analyse, apply_plan, plan_pruning
from secateur.zoo.models import build_model, natural_defaults

RATIO = 0.5
TORCHVISION_DEFAULT = ["resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121",
                       "efficientnet_b0", "regnet_x_400mf"]
TIMM_DEFAULT = [
    # ViT / DeiT / Swin
    "vit_tiny_patch16_224", "vit_small_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
    "swin_tiny_patch4_window7_224",
    # ConvNeXt
    "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnextv2_atto",
    # EfficientNet
    "efficientnet_b0", "efficientnet_lite0", "tf_efficientnetv2_b0", "tinynet_e",
    # MobileNet
    "mobilenetv2_050", "mobilenetv2_100", "mobilenetv3_small_050", "mobilenetv3_large_100",
    "mobilenetv4_conv_small", "mobilenetv4_hybrid_medium", "lcnet_050",
    # RegNet
    "regnetx_002", "regnety_002", "regnetx_004", "regnetz_b16",
    # ResNet / ResNeXt
    "resnet18", "resnet50", "resnet26d", "resnext26ts", "seresnext26d_32x4d",
    # hybrids (convolution + attention)
    "convit_tiny", "levit_128s", "mobilevit_xxs", "mobilevitv2_050", "efficientformer_l1", "efficientformerv2_s0",
    "coatnet_nano_rw_224", "maxvit_pico_rw_256", "edgenext_xx_small", "fastvit_t8",
    # other convolutional networks
    "ghostnet_100", "mixnet_s", "repvgg_a0", "rexnet_100", "densenet121",
]
# (family, pattern on the bare architecture name): first match wins, so hybrids come before the rest.
FAMILIES = [
    ("hybrid", r"^(convit|levit|mobilevit|efficientformer|coatnet|maxvit|edgenext|fastvit|coat_)"),
    ("vit", r"^(vit|deit|swin|beit|eva)"),
    ("convnext", r"^convnext"),
    ("efficientnet", r"^(tf_)?efficientnet|^tinynet"),
    ("mobilenet", r"^mobilenet|^lcnet|^mnasnet|^semnasnet"),
    ("regnet", r"^regnet"),
    ("resnet", r"^(se|wide_)?res(net|next)"),
    ("densenet", r"^densenet"),
    ("vgg", r"^vgg"),
    ("shufflenet", r"^shufflenet"),
]
TOOLS = ("secateur", "torch_pruning")
LIST_LIMIT = 8  # notes / layers kept per entry in the JSON


# --------------------------------------------------------------------------- which models


def torchvision_models() -> list[str]:
    """Every torchvision classification model name."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def zoo_models(zoo: str, which: str | None) -> list[str]:
    """secateur model names of ``zoo`` ('torchvision' or 'timm'): its default set, ``all``, or none."""
    if zoo == "torchvision":
        names = torchvision_models() if which == "all" else TORCHVISION_DEFAULT
        return [f"torchvision:{n}" for n in names]
    if zoo == "timm":
        if which == "all":
            raise SystemExit("--models all means every torchvision classifier; timm has too many, name them")
        return [f"timm:{n}" for n in TIMM_DEFAULT]
    raise SystemExit(f"unknown zoo {zoo!r}; choose torchvision or timm")


def qualify(name: str, zoos: list[str]) -> str:
    """``resnet18`` -> ``torchvision:resnet18`` (the first zoo chosen) unless already qualified."""
    return name if ":" in name else f"{zoos[0]}:{name}"


def family(name: str) -> str:
    """The family of a model name (``timm:convnext_atto`` -> ``convnext``), ``other`` when none fits."""
    arch = name.split(":", 1)[-1]
    return next((fam for fam, pattern in FAMILIES if re.search(pattern, arch)), "other")


def select(args: argparse.Namespace) -> list[str]:
    """The models to run, from ``--zoo``, ``--models`` and ``--family``."""
    zoos = [z.strip() for z in args.zoo.split(",") if z.strip()]
    if args.models and args.models != "all":
        names = [qualify(n.strip(), zoos) for n in args.models.split(",") if n.strip()]
    else:
        names = [n for zoo in zoos for n in zoo_models(zoo, args.models)]
    if args.family:
        wanted = {f.strip() for f in args.family.split(",")}
        names = [n for n in names if family(n) in wanted]
    return names


# --------------------------------------------------------------------------- pruning and measuring


def input_shape(name: str) -> tuple[int, ...]:
    """The model's natural input (224x224 for most; torchvision inception_v3 299, timm's own size)."""
    if name == "torchvision:inception_v3":
        return (3, 299, 299)
    return natural_defaults(name)[0]


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


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear layer, by module path."""
    return {path: (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
            for path, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))}


def _jsonable(item: Any) -> Any:
    """A report entry (a dataclass, a mapping, anything else) as plain JSON data."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        item = dataclasses.asdict(item)
    if isinstance(item, dict):
        return {str(k): _jsonable(v) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return [_jsonable(v) for v in item]
    return item if isinstance(item, (int, float, str, bool, type(None))) else str(item)


def graph_report(graph: DependencyGraph, outputs: set[str]) -> dict:
    """What secateur's analysis kept and why: locked output channels, notes, unfollowed ops."""
    prunable: dict[str, int] = {}
    for group in graph.groups:
        for member in group.members:
            if member.role == "out":
                prunable[member.module] = prunable.get(member.module, 0) + len(member.positions)
    widths = {path: n for (path, role), n in graph.dims.items() if role == "out" and path not in outputs}
    total, free = sum(widths.values()), sum(min(prunable.get(p, 0), n) for p, n in widths.items())
    unfollowed = getattr(graph, "unfollowed", None)  # the structured report, where the analysis has one
    return {"groups": len(graph.groups), "out_channels": total, "locked_channels": total - free,
            "locked_share": (total - free) / total if total else 0.0,
            "notes": list(graph.notes)[:LIST_LIMIT], "notes_total": len(graph.notes),
            "unfollowed": None if unfollowed is None else _jsonable(list(unfollowed))[:LIST_LIMIT * 4]}


def prune_secateur(model: nn.Module, x: torch.Tensor, num_classes: int) -> dict:
    start = time.perf_counter()
    graph = analyse(model, x)
    analysed = time.perf_counter()
    outputs = {p for p, m in model.named_modules() if any(m is c for c in classifier_layers(model, num_classes))}
    kept = graph_report(graph, outputs)
    plan = plan_pruning(model, graph, ratio=RATIO, method="l1", scope="local")
    apply_plan(model, plan)
    return {"analyse_seconds": analysed - start, "prune_seconds": time.perf_counter() - analysed, "kept": kept}


def prune_torch_pruning(model: nn.Module, x: torch.Tensor, num_classes: int) -> dict:
    import torch_pruning as tp

    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO,
        global_pruning=False, ignored_layers=classifier_layers(model, num_classes))
    analysed = time.perf_counter()
    pruner.step()
    return {"analyse_seconds": analysed - start, "prune_seconds": time.perf_counter() - analysed,
            "kept": {"ignored_layers": "the classifier (told to keep it)"}}


PRUNERS: dict[str, Callable[[nn.Module, torch.Tensor, int], dict]] = {
    "secateur": prune_secateur,
    "torch_pruning": prune_torch_pruning,
}


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


def run_one(tool: str, name: str, args: argparse.Namespace) -> dict:
    """Build ``name``, measure it, prune it with ``tool`` and measure again; failures become ``ok: False``."""
    shape, classes = input_shape(name), natural_defaults(name)[1]
    entry: dict[str, Any] = {"ok": False, "error": None, "family": family(name), "input_shape": list(shape)}
    stage = "build"
    try:
        torch.manual_seed(0)
        model = build_model(name, input_shape=shape).eval()
        entry.update(params_before=count_params(model), macs_before=count_macs(model, shape))
        if not args.no_latency:
            entry.update(latency_b1_before=latency(model, shape, 1, args.repeats),
                         latency_b32_before=latency(model, shape, 32, args.repeats))
        widths = layer_widths(model)
        stage = "prune"
        entry.update(PRUNERS[tool](model, torch.randn(1, *shape), classes))
        stage = "check"
        _check_and_measure(model, name, shape, classes, widths, entry, args)
        entry["ok"] = True
    except Exception as err:  # the benchmark records any failure and moves on
        entry["error"] = f"{stage}: {first_line(err)}"
    _ratios(entry)
    return entry


def _check_and_measure(model: nn.Module, name: str, shape: tuple[int, ...], classes: int,
                       widths: dict[str, int], entry: dict, args: argparse.Namespace) -> None:
    """The pruned model runs with the right output, is smaller; its sizes and unpruned layers."""
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    if tuple(out.shape) != (2, classes):
        raise RuntimeError(f"pruned model outputs shape {tuple(out.shape)}, expected (2, {classes})")
    entry.update(params_after=count_params(model), macs_after=count_macs(model, shape))
    if entry["params_after"] >= entry["params_before"]:
        raise RuntimeError("nothing was pruned")
    after = layer_widths(model)
    heads = {p for p, m in model.named_modules() if any(m is c for c in classifier_layers(model, classes))}
    unpruned = [p for p, n in widths.items() if p not in heads and after.get(p) == n]
    entry["unpruned_layers"] = len(unpruned)
    entry["layers"] = len(widths) - len(heads)
    entry["unpruned_examples"] = unpruned[:LIST_LIMIT]
    if not args.no_latency:
        entry.update(latency_b1_after=latency(model, shape, 1, args.repeats),
                     latency_b32_after=latency(model, shape, 32, args.repeats))


def _ratios(entry: dict) -> None:
    if entry.get("params_after"):
        entry["param_ratio"] = entry["params_before"] / entry["params_after"]
    if entry.get("macs_after"):
        entry["mac_ratio"] = entry["macs_before"] / entry["macs_after"]
    for b in ("b1", "b32"):
        if entry.get(f"latency_{b}_after") and entry.get("mac_ratio"):
            speedup = entry[f"latency_{b}_before"] / entry[f"latency_{b}_after"]
            entry[f"speedup_{b}"] = speedup
            entry[f"speedup_{b}_over_mac_ratio"] = speedup / entry["mac_ratio"]


# --------------------------------------------------------------------------- isolation


def _child(name: str, tool: str, args: argparse.Namespace, conn: Any) -> None:
    """Subprocess body: the whole measurement of one model by one tool."""
    if args.threads:
        torch.set_num_threads(args.threads)
    conn.send(run_one(tool, name, args))
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


def run_isolated(name: str, tool: str, args: argparse.Namespace) -> dict:
    """``run_one`` in a fresh process, killed past ``--timeout`` seconds or ``--max-gb`` of memory."""
    # fork: the parent never runs a torch op (every measurement is in the children), so a forked
    # child starts at once instead of importing torch, timm and secateur again for every model.
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, tool, args, send), daemon=True)
    start, limit = time.perf_counter(), args.max_gb * 2**30
    proc.start()
    send.close()
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
    try:
        result = None if why else recv.recv()
    except EOFError:
        result, why = None, "worker closed its pipe without a result"
    proc.kill()
    proc.join()
    result = result or {"ok": False, "error": why, "family": family(name)}
    result["seconds"] = time.perf_counter() - start
    return result


def bench_model(name: str, args: argparse.Namespace) -> dict:
    """Both tools on one model, each in its own process."""
    return {tool: run_isolated(name, tool, args) for tool in TOOLS}


# --------------------------------------------------------------------------- tables


def _fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{v / scale:.{digits}f}"


def _why_kept(s: dict) -> str:
    """secateur's reason for what it kept, short: the locked share and the first unfollowed op or note."""
    kept = s.get("kept") or {}
    if not kept:
        return ""
    unfollowed = kept.get("unfollowed") or []
    first = unfollowed[0] if unfollowed else (kept.get("notes") or [""])[0]
    reason = json.dumps(first) if isinstance(first, dict) else str(first)
    return f"{kept.get('locked_share', 0):.0%} locked" + (f"; {reason}"[:120] if reason else "")


def model_table(results: dict[str, dict]) -> list[str]:
    head = ("| model | family | sec | tp | params M | param ratio (sec / tp) | GMACs | MAC ratio (sec / tp) | "
            "unpruned layers (sec / tp) | analyse s (sec / tp) | secateur kept | error |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        s, t = r["secateur"], r["torch_pruning"]
        err = "; ".join(f"{k}: {v['error']}" for k, v in (("sec", s), ("tp", t)) if v.get("error"))
        before = s if s.get("params_before") else t
        lines.append(
            f"| {name} | {s.get('family', family(name))} | {'ok' if s['ok'] else 'FAIL'} | "
            f"{'ok' if t['ok'] else 'FAIL'} | {_fmt(before.get('params_before'), 1e6)} | "
            f"{_fmt(s.get('param_ratio'))} / {_fmt(t.get('param_ratio'))} | {_fmt(before.get('macs_before'), 1e9)} | "
            f"{_fmt(s.get('mac_ratio'))} / {_fmt(t.get('mac_ratio'))} | "
            f"{_layers(s)} / {_layers(t)} | "
            f"{_fmt(s.get('analyse_seconds'))} / {_fmt(t.get('analyse_seconds'))} | "
            f"{_why_kept(s).replace('|', '/')} | {err.replace('|', '/')[:160]} |")
    return lines


def _layers(e: dict) -> str:
    return f"{e['unpruned_layers']}/{e['layers']}" if "layers" in e else "-"


LESS = 0.99  # secateur's ratio below this share of Torch-Pruning's counts as "removes less"


def works(entry: dict) -> bool:
    """A working model of the right output came out (pruned, or unchanged: ratio 1)."""
    return bool(entry["ok"] or (entry.get("error") or "").endswith("nothing was pruned"))


def both_work(results: dict[str, dict]) -> list[dict]:
    """The rows where both tools gave a working model (a tool that removed nothing counts, at 1.00x)."""
    return [r for r in results.values() if works(r["secateur"]) and works(r["torch_pruning"])]


def family_rows(results: dict[str, dict]) -> list[dict]:
    """Per family: models, successes, median / minimum ratios per tool on the models both handle."""
    rows = []
    for fam in sorted({r["secateur"].get("family", family(n)) for n, r in results.items()}):
        members = {n: r for n, r in results.items() if r["secateur"].get("family", family(n)) == fam}
        both = both_work(members)
        members = list(members.values())
        row: dict[str, Any] = {"family": fam, "models": len(members), "both": len(both)}
        for tool in TOOLS:
            row[f"{tool}_ok"] = sum(r[tool]["ok"] for r in members)
            for key in ("param_ratio", "mac_ratio"):
                values = [r[tool][key] for r in both]
                row[f"{tool}_{key}_median"] = statistics.median(values) if values else None
                row[f"{tool}_{key}_min"] = min(values) if values else None
        row["secateur_less"] = sum(r["secateur"]["param_ratio"] < LESS * r["torch_pruning"]["param_ratio"]
                                   for r in both)
        alone = [r["secateur"]["param_ratio"] for r in members if works(r["secateur"])]
        row["secateur_param_ratio_median_all"] = statistics.median(alone) if alone else None
        row["secateur_main_lock"] = main_lock(members)
        rows.append(row)
    return rows


def main_lock(members: list[dict]) -> str:
    """The op secateur's notes name most often in a family (what its analysis most often stopped at)."""
    ops: Counter[str] = Counter()
    for r in members:
        kept = r["secateur"].get("kept") or {}
        found = {m.group(0) for note in kept.get("notes") or [] for m in [OP.search(note)] if m}
        ops.update(found)
    return ops.most_common(1)[0][0] if ops else ""


OP = re.compile(r"(call_\w+|kept \S+ whole: fx cannot trace)( '[^']+')?")


def family_table(rows: list[dict]) -> list[str]:
    head = ("| family | models | ok (sec / tp) | param ratio median (sec / tp) | param ratio min (sec / tp) | "
            "MAC ratio median (sec / tp) | secateur < tp | secateur median, all it handles | secateur's main lock |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['models']} | {r['secateur_ok']} / {r['torch_pruning_ok']} | "
            f"{_fmt(r['secateur_param_ratio_median'])} / {_fmt(r['torch_pruning_param_ratio_median'])} | "
            f"{_fmt(r['secateur_param_ratio_min'])} / {_fmt(r['torch_pruning_param_ratio_min'])} | "
            f"{_fmt(r['secateur_mac_ratio_median'])} / {_fmt(r['torch_pruning_mac_ratio_median'])} | "
            f"{r['secateur_less']} of {r['both']} | {_fmt(r.get('secateur_param_ratio_median_all'))} | "
            f"{r.get('secateur_main_lock', '')} |")
    return lines


def markdown(results: dict[str, dict], args: argparse.Namespace, wall: float) -> str:
    """The header (exact command, versions, wall time), the family table, the per-model table."""
    return "\n".join([_summary(results, args, wall), "", "## Per family (ratios on the models both tools handle)", "",
                      *family_table(family_rows(results)), "", "## Per model", "", *model_table(results), "",
                      _legend()])


def _legend() -> str:
    return ("Ratios are before / after (higher = more removed). *ok*: a smaller working model; a tool that "
            "returns the model unchanged is FAIL (\"nothing was pruned\") but counts at 1.00x in the family "
            "table, where a model is counted when both tools return a working model. *unpruned layers*: "
            "conv / linear layers (classifier excluded) whose output width is unchanged. *secateur kept*: "
            "the share of output channels its analysis locked (kept whole) and the first op it could not "
            "follow (or its first note). "
            f"*secateur < tp*: models where secateur's parameter ratio is below {LESS:.0%} of Torch-Pruning's.")


def _summary(results: dict[str, dict], args: argparse.Namespace, wall: float) -> str:
    ok = {tool: sum(r[tool]["ok"] for r in results.values()) for tool in TOOLS}
    both = both_work(results)
    medians = {tool: statistics.median([r[tool]["param_ratio"] for r in both]) if both else float("nan")
               for tool in TOOLS}
    less = sum(r["secateur"]["param_ratio"] < LESS * r["torch_pruning"]["param_ratio"] for r in both)
    first = parse_args(args.commands[0]) if getattr(args, "commands", None) else args  # the run's own settings
    latency = "skipped" if first.no_latency else f"median of {first.repeats}"
    threads = first.threads or torch.get_num_threads()
    commands = "".join(f"- {'command' if i == 0 else 'then'}: `python bench/structured.py {' '.join(c)}`\n"
                       for i, c in enumerate(getattr(args, "commands", [sys.argv[1:]])))
    return (f"# Structured pruning benchmark ({RATIO:.0%} channels, L1, local)\n\n{commands}"
            f"- torch {torch.__version__}, {_versions()}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"{threads} thread(s), latency {latency}; wall time {wall / 60:.1f} min\n"
            f"- models handled: secateur {ok['secateur']}/{len(results)}, "
            f"torch-pruning {ok['torch_pruning']}/{len(results)}\n"
            f"- on the {len(both)} models both handle: median parameter ratio secateur {medians['secateur']:.2f}x, "
            f"torch-pruning {medians['torch_pruning']:.2f}x; secateur removes less on {less}")


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("torchvision", "timm", "torch-pruning"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} missing")
    return ", ".join(found)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--zoo", default="torchvision", help="comma-separated zoos: torchvision, timm")
    parser.add_argument("--models", help="comma-separated model names (bare names take the first zoo), or 'all' "
                                         "(every torchvision classifier); default: each zoo's default set")
    parser.add_argument("--family", help="comma-separated families to keep (e.g. vit,convnext,regnet)")
    parser.add_argument("--json", type=Path, help="write results JSON here")
    parser.add_argument("--md", type=Path, help="write the markdown tables here")
    parser.add_argument("--no-latency", action="store_true", help="skip CPU latency measurements")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per latency (median)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model and tool before giving up")
    parser.add_argument("--max-gb", type=float, default=8, help="memory per model and tool before giving up")
    parser.add_argument("--redraw", action="store_true", help="only rewrite --md (and print it) from --json")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows already in --json and (re)run only the selected models into it")
    return parser.parse_args(argv)


def previous(args: argparse.Namespace) -> tuple[dict[str, dict], float]:
    """With ``--update``: the rows and wall seconds already in ``--json`` (rows run again are replaced),
    and the earlier runs' commands noted in ``args.commands``."""
    args.commands = [sys.argv[1:]]
    if not args.update:
        return {}, 0.0
    if not args.json or not args.json.is_file():
        raise SystemExit("--update needs --json FILE holding an earlier run")
    earlier = json.loads(args.json.read_text())
    args.commands = list(earlier.get("commands") or [earlier.get("command") or []]) + args.commands
    return dict(earlier["models"]), float(earlier.get("wall_seconds") or 0.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [] if args.redraw else select(args)
    args.update = args.update or args.redraw
    results, earlier = previous(args)
    if args.redraw:
        args.commands.pop()
    start = time.perf_counter() - earlier
    for name in names:
        results[name] = bench_model(name, args)
        s, t = results[name]["secateur"], results[name]["torch_pruning"]
        print(f"{name}: secateur {_fmt(s.get('param_ratio'))}x ({s['seconds']:.0f}s), torch-pruning "
              f"{_fmt(t.get('param_ratio'))}x ({t['seconds']:.0f}s)", file=sys.stderr, flush=True)
        wall = time.perf_counter() - start
        if args.json:
            write_atomic(args.json, json.dumps({"commands": args.commands, "wall_seconds": wall, "models": results,
                                                "families": family_rows(results)}, indent=1))
        if args.md:
            write_atomic(args.md, markdown(results, args, wall))
    wall = earlier if args.redraw else time.perf_counter() - start
    if args.redraw and args.md:
        write_atomic(args.md, markdown(results, args, wall))
    print(markdown(results, args, wall))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
