"""The ``secateur`` command line: a thin layer over the Python API.

Every sub-command parses its arguments, calls one API function and prints the result.
Expected mistakes (:class:`~secateur.errors.SecateurError`, bad argument values) print one
line ``secateur: error: ...`` and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import torch
from rich.console import Console
from torch import nn

from secateur import __version__
from secateur.analysis.metrics import count_macs, count_params, format_layer_table, layer_stats, zero_input
from secateur.analysis.sweep import DEFAULT_METHODS as DEFAULT_SWEEP_METHODS
from secateur.analysis.sweep import DEFAULT_SCHEDULE, DEFAULT_STRENGTHS, sweep_schedules
from secateur.app.recipe import Recipe, read_recipe
from secateur.distributed import is_writer, launched, session
from secateur.errors import ConfigError, SecateurError
from secateur.io import rundir
from secateur.io.schemas import FLOAT32_MAX, INT64_MAX, MAX_EPOCHS, MAX_STRENGTH
from secateur.io.storage import load_model
from secateur.registry import Registry
from secateur.search.config import PruneConfig
from secateur.search.pruner import GRANULARITIES
from secateur.search.schedules import SCHEDULES
from secateur.train import AUTOCASTS, DEVICES, LR_SCHEDULES, OPTIMIZERS, TrainConfig, resolve_device
from secateur.zoo.baseline import default_config, train_baseline
from secateur.zoo.data import DATASETS
from secateur.zoo.models import MODELS, build_model, natural_defaults

if TYPE_CHECKING:  # argparse's sub-parser action is generic in typeshed only
    SubParsers = argparse._SubParsersAction["_Parser"]

Number = TypeVar("Number", int, float)
MAX_CLASSES = 100_000  # --num-classes of 'secateur info'
MAX_INPUT = 2**24  # values in one --input-shape of 'secateur info' (one forward pass runs on it)
TRAIN_FIELDS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "l1",
                "lr_schedule", "augment", "seed", "device", "autocast")  # the training flags (add_train_args)
RUN_FLAGS = ("device", "autocast")  # where and in what precision a run trains: may change on a resume


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes on one line (exit 2) instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (64-bit)."""
    return _checked(int, text, lambda v: 1 <= v <= INT64_MAX, "a whole number >= 1 (below 2**63)")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (64-bit: seeds, counts)."""
    return _checked(int, text, lambda v: 0 <= v <= INT64_MAX, "a whole number >= 0 (below 2**63)")


def epochs(text: str) -> int:
    """argparse type: a number of epochs, 0 to MAX_EPOCHS."""
    return _checked(int, text, lambda v: 0 <= v <= MAX_EPOCHS, f"a whole number >= 0 (at most {MAX_EPOCHS:,} epochs)")


def classes(text: str) -> int:
    """argparse type: a number of classes, 1 to MAX_CLASSES."""
    return _checked(int, text, lambda v: 1 <= v <= MAX_CLASSES, f"a whole number >= 1 (at most {MAX_CLASSES:,})")


def positive_float(text: str) -> float:
    """argparse type: a number > 0 that float32 holds (not nan or inf)."""
    return _checked(float, text, lambda v: 0 < v <= FLOAT32_MAX, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0 that float32 holds (not nan or inf)."""
    return _checked(float, text, lambda v: 0 <= v <= FLOAT32_MAX, "a finite number >= 0")


def existing_path(text: str) -> Path:
    """argparse type: a path that exists."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return path


def _checked(kind: Callable[[str], Number], text: str, ok: Callable[[Number], bool], want: str) -> Number:
    """``kind(text)`` if ``ok`` of it (False for nan: every comparison with it is), else a one-line error."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
    return value


def shape(text: str) -> tuple[int, ...]:
    """argparse type: an input shape such as ``1,28,28`` (at most MAX_INPUT values in all)."""
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,28,28, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    if math.prod(dims) > MAX_INPUT:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_INPUT:,} values in all, got {text!r}")
    return dims


def device(text: str) -> str:
    """argparse type: a device that is there (``auto``, ``cpu``, ``cuda``, ``cuda:N``), kept as given."""
    name = text.strip().lower()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA GPU; use --device auto or --device cpu")
    try:
        resolve_device(name)
    except ConfigError:
        gpus = f" (this machine has {torch.cuda.device_count()} CUDA GPUs)" if name.startswith("cuda") else ""
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DEVICES)}, got {text!r}{gpus}") from None
    return name


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """--dataset / --data-dir, shared by every command that reads data."""
    parser.add_argument("--dataset", default=None,
                        help="dataset name (see 'secateur list'), or imagefolder:PATH for your own images (one "
                             "subfolder per class; @SIZE resizes, default 32); default: the baseline's, else mnist")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding the dataset files (default: $SECATEUR_DATA/<name>, "
                             "~/.cache/secateur/<name>, else download)")


def add_weights_arg(parser: argparse.ArgumentParser) -> None:
    """--weights FILE: a local safetensors state dict loaded into the model built from its name."""
    parser.add_argument("--weights", type=existing_path, default=None, metavar="FILE",
                        help="a local .safetensors state dict loaded into the model built from --model, before "
                             "anything else (with --epochs 0 the baseline keeps it as is)")


def add_force_arg(parser: argparse.ArgumentParser, what: str) -> None:
    """--force: replace secateur's own output of this command in --out (only the files it wrote)."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace {what} secateur wrote earlier in --out (deleting only its own files)")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Training options; unset ones fall back to the model's default recipe."""
    group = parser.add_argument_group("training (defaults: the model's recipe)")
    group.add_argument("--epochs", type=epochs)
    group.add_argument("--batch-size", type=positive_int)
    group.add_argument("--lr", type=positive_float, help="learning rate")
    group.add_argument("--optimizer", choices=OPTIMIZERS.names())
    group.add_argument("--momentum", type=non_negative_float)
    group.add_argument("--weight-decay", type=non_negative_float, help="L2 weight decay")
    group.add_argument("--l1", type=non_negative_float,
                       help="L1 penalty: l1 x sum |w| of the Linear / Conv weights added to the loss (default 0)")
    group.add_argument("--lr-schedule", choices=LR_SCHEDULES.names(),
                       help="learning-rate schedule")
    group.add_argument("--augment", type=non_negative_int, help="random shift in pixels")
    group.add_argument("--seed", type=non_negative_int)
    group.add_argument("--device", type=device,
                       help="auto (default: CUDA when present, else cpu), cpu, cuda or cuda:N")
    group.add_argument("--autocast", choices=AUTOCASTS.names(),
                       help="mixed precision of the training steps: none (default) or bf16")


def train_config_from(args: argparse.Namespace, model: str, recipe: dict | None = None) -> TrainConfig:
    """The model's default recipe, then a recipe file's training options, then the flags given."""
    changes = {f: getattr(args, f) for f in TRAIN_FIELDS if getattr(args, f, None) is not None}
    return default_config(model).replace(**{**(recipe or {}), **changes}).validate()


def cmd_train(args: argparse.Namespace) -> int:
    """secateur train: train a dense baseline and save it."""
    config = train_config_from(args, args.model)
    dataset = args.dataset or "mnist"
    result = train_baseline(args.model, dataset, out=args.out, config=config, data_dir=args.data_dir,
                            progress=not args.quiet and is_writer(), force=args.force, weights=args.weights)
    metrics = result.meta["metrics"]
    if not is_writer():
        return 0
    print(f"{args.model} on {dataset}: val accuracy {100 * metrics['val']['accuracy']:.2f}%, "
          f"test accuracy {100 * metrics['test']['accuracy']:.2f}% "
          f"(test error {100 * (1 - metrics['test']['accuracy']):.2f}%) "
          f"in {result.meta['train_seconds']:.0f} s -> {args.out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """secateur info: per-layer table of a zoo model or of a saved checkpoint."""
    from secateur.structured.attention import ATTENTION_UNITS

    ATTENTION_UNITS.get(args.attention)  # a bad name: one line, before any model is built
    model, input_shape = _model_for_info(args)
    stats = layer_stats(model, input_shape)
    console = Console()
    console.print(format_layer_table(stats))
    console.print(f"parameters: {count_params(model):,} (nonzero {count_params(model, nonzero=True):,}); "
                  f"MACs for one {'x'.join(map(str, input_shape))} input: {count_macs(model, input_shape):,}")
    console.print(structure_line(model, input_shape, args.attention), highlight=False, markup=False,
                  soft_wrap=True)
    return 0


def structure_line(model: nn.Module, input_shape: tuple[int, ...], attention: str = "heads") -> str:
    """What structured pruning can reach in ``model``, and every op whose channels it must keep."""
    from secateur.structured.graph import analyse  # lazy: tracing machinery only for this line

    try:
        graph = analyse(model, zero_input(model, input_shape), attention=attention)
    except SecateurError as err:
        return f"structured pruning: {err}"
    line = (f"structured pruning: {len(graph.groups)} prunable groups, "
            f"{sum(g.size for g in graph.groups):,} channels")
    if not graph.unfollowed:
        return line + "; every op is followed"
    return "\n".join([line + "; channels kept at ops the analysis does not follow:",
                      *(f"  {u.op} in {u.path or '<root>'}: {u.channels} channels" for u in graph.unfollowed)])


def _model_for_info(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, ...]]:
    """Resolve ``info``'s MODEL: a checkpoint path (file or run folder) or a registry name, built
    for its natural inputs unless --input-shape / --num-classes say otherwise."""
    target = Path(args.model)
    if _is_path(args.model):
        if args.weights is not None:
            raise ConfigError("--weights loads into a model built from a name; a checkpoint has its own weights")
        model, meta = load_model(rundir.checkpoint_in(target))
        natural = natural_defaults(str(meta["model"]["name"]))[0]
        return model, tuple(args.input_shape or meta["model"]["args"].get("input_shape", natural))
    shape = tuple(args.input_shape or natural_defaults(args.model)[0])
    return build_model(args.model, input_shape=shape, num_classes=args.num_classes, weights=args.weights), shape


def _is_path(text: str) -> bool:
    """Whether ``info``'s MODEL names a file or folder rather than a model (no model name holds a /)."""
    path = Path(text)
    return path.exists() or "/" in text or os.sep in text or path.suffix in (".safetensors", ".json")


def at_least_one(text: str) -> float:
    """argparse type: a number >= 1 that float32 holds."""
    return _checked(float, text, lambda v: 1 <= v <= FLOAT32_MAX, "a finite number >= 1")


def share(text: str) -> float:
    """argparse type: a share in [0, 1)."""
    return _checked(float, text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def level(text: str) -> float:
    """argparse type: a confidence level in [0.5, 1)."""
    return _checked(float, text, lambda v: 0.5 <= v < 1, "a number in [0.5, 1), e.g. 0.95")


def _kinds() -> dict[str, Callable[[str], object]]:
    """argparse types of the value kinds named in the config fields' metadata."""
    return {"int>=1": positive_int, "int>=0": non_negative_int, "epochs": epochs, "float>0": positive_float,
            "float>=0": non_negative_float, "float>=1": at_least_one, "names": names, "str": str,
            "share": share, "level": level}


def _option_help(meta: dict, default: object) -> str:
    """A field's help, with its registry choices and its default."""
    text = meta["help"]
    if meta.get("choices") is not None:
        text += f"; one of: {', '.join(meta['choices']())}"
    return text + (f" (default {default})" if default is not None else "")


def add_search_args(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`PruneConfig` option that has a value kind (flag = option name with dashes).

    Every default is None here so a recipe file's value is only overridden by a flag actually
    given; the config's own defaults apply last.
    """
    kinds = _kinds()
    for spec in dataclasses.fields(PruneConfig):
        meta = dict(spec.metadata)
        if meta.get("kind") is None:
            continue
        flag = "--" + spec.name.replace("_", "-")
        if meta["kind"] == "flag":  # a switch: given means True; absent leaves the recipe's value
            parser.add_argument(flag, dest=spec.name, action="store_const", const=True, default=None,
                                help=meta["help"])
            continue
        parser.add_argument(flag, dest=spec.name, type=kinds[meta["kind"]], default=None,
                            help=_option_help(meta, spec.default))
    parser.add_argument("--config", dest="recipe", type=existing_path, default=None,
                        help="a recipe file (YAML) whose keys are these options' names; flags override it")


def names(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated list of names."""
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected names like conv1,fc1, got {text!r}")
    return values


def given_options(args: argparse.Namespace) -> dict[str, object]:
    """The prune options given on the command line."""
    given = {}
    for spec in dataclasses.fields(PruneConfig):
        value = getattr(args, spec.name, None)
        if value is not None and dict(spec.metadata).get("kind") is not None:
            given[spec.name] = value
    return given


def given_settings(args: argparse.Namespace, recipe: Recipe) -> dict[str, object]:
    """Every prune and training setting the command line or the recipe file gave, by name."""
    trained = {f: getattr(args, f) for f in TRAIN_FIELDS if getattr(args, f, None) is not None}
    given = {**recipe.train, **recipe.prune, **trained, **given_options(args)}
    return {key: value for key, value in given.items() if key not in RUN_FLAGS}


def prune_config_from(args: argparse.Namespace, recipe: dict | None = None) -> PruneConfig:
    """A PruneConfig from a recipe's prune options, overridden by the flags given."""
    options = {**(recipe or {}), **given_options(args)}
    if getattr(args, "seed", None) is not None:
        options["seed"] = args.seed
    return PruneConfig.from_dict(options)


def cmd_prune(args: argparse.Namespace) -> int:
    """secateur prune: the smallest model within --max-drop, with its run folder and report."""
    from secateur.app.pipeline import finished_run, prune_run  # lazy: app.pipeline imports matplotlib

    recipe = read_recipe(args.recipe) if args.recipe is not None else Recipe()
    model = args.model or (recipe.model if args.from_dir is None else None)
    dataset, given = args.dataset or recipe.dataset, given_settings(args, recipe)
    if args.resume and not args.force and (done := finished_run(args.out, given, model=model, dataset=dataset,
                                             from_dir=args.from_dir)) is not None:
        if is_writer():
            print(f"secateur: the run in {args.out} has already finished; nothing to resume", file=sys.stderr)
            print(summary_line(done, args.out))
        return 0
    if model is None and args.from_dir is None and not args.resume:
        raise ConfigError("give --model (a baseline is trained first) or --from a trained baseline folder")
    train_config = train_config_from(args, model, recipe.train) if model else None
    result = prune_run(out=args.out, model=model, dataset=dataset, from_dir=args.from_dir,
                       config=prune_config_from(args, recipe.prune), train_config=train_config,
                       data_dir=args.data_dir, resume=args.resume, force=args.force,
                       given=given, progress=not args.quiet, device=args.device, autocast=args.autocast,
                       weights=args.weights)
    if is_writer():
        print(summary_line(result.results, args.out))
    return 0


def summary_line(results: dict, out: Path) -> str:
    """One line: compression, nonzero parameters, val/test accuracy before and after."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    base, pruned, macs = results["baseline"], results["pruned"], results.get("macs") or {}
    fewer = ""
    if macs.get("dense") and macs["dense"] < macs["baseline"]:
        fewer = f", {macs['baseline'] / macs['dense']:.1f}x fewer MACs"
    return (f"{results['compression']:.1f}x smaller ({results['params']['nonzero']:,} of "
            f"{results['params']['baseline']:,} parameters nonzero{fewer}); val {pct(base['val']['accuracy'])} -> "
            f"{pct(pruned['val']['accuracy'])}, test {pct(base['test']['accuracy'])} -> "
            f"{pct(pruned['test']['accuracy'])}; {drops_line(results)}; report: {rundir.report_paths(out)['html']}")


def drops_line(results: dict) -> str:
    """The drops and the reference they are measured against (``results.json``'s drop, reference, certification)."""
    def pts(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.2f}"

    drop, reference = results.get("drop") or {}, results.get("reference") or {}
    used = reference.get("used", "baseline")
    control = "" if reference.get("control") else ", no dense control run"
    text = f"drops vs the {used}{control}: val {pts(drop.get('val'))}"
    certification = results.get("certification")
    if certification:
        level = f"{100 * certification['level']:g}%"
        text += (f", certified {pts(drop.get('certified'))} ({level} bound {pts(drop.get('certified_ucb'))})"
                 if certification["certified"] else ", none certified (baseline returned)")
    return text + f", test {pts(drop.get('test'))} pts"


def cmd_export(args: argparse.Namespace) -> int:
    """secateur export: a run folder or checkpoint written in a registered export format."""
    from secateur.export import export_model  # lazy: only this command needs the exporters

    options = dict(option.split("=", 1) for option in args.option)
    done = export_model(args.source, args.out, args.format, force=args.force, **options)
    Console().print(f"{done.format}: {done.path} ({done.bytes:,} bytes)")
    if done.details:  # the format's own facts (onnx: exporter, max |diff| vs PyTorch, latency)
        print(json.dumps(done.details))
    return 0


def option_pair(text: str) -> str:
    """A ``--option NAME=VALUE`` of ``secateur export``."""
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return text


def cmd_report(args: argparse.Namespace) -> int:
    """secateur report: re-render the report of a run folder."""
    from secateur.report import render_report  # lazy: matplotlib loads only for the commands that draw

    rundir.check_report(args.run_dir)
    paths = render_report(args.run_dir)
    print("\n".join(str(path) for path in paths.values()))
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """secateur sensitivity: per-layer curves and the factors chosen from them."""
    from secateur.app.pipeline import sensitivity_run  # lazy: app.pipeline imports matplotlib (secateur.report)

    result = sensitivity_run(from_dir=args.from_dir, method=args.method, out=args.out, data_dir=args.data_dir,
                             tolerance=args.tolerance, progress=not args.quiet, force=args.force)
    for name, factor in result["factors"].items():
        print(f"{name:<24} factor {factor:.2f}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """secateur sweep: trade-off curves of several methods on one plot."""
    from secateur.app.pipeline import sweep_run  # lazy: app.pipeline imports matplotlib (secateur.report)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    paths = sweep_run(out=args.out, model=args.model, from_dir=args.from_dir, dataset=args.dataset,
                      methods=methods, strengths=args.strengths, retrain_epochs=args.retrain_epochs,
                      data_dir=args.data_dir, progress=not args.quiet, force=args.force, weights=args.weights,
                      workers=args.workers, worker_threads=args.worker_threads, schedule=args.schedule,
                      test=args.test)
    print("\n".join(str(path) for path in paths.values()))
    return 0


def strengths(text: str) -> tuple[float, ...]:
    """argparse type: a comma-separated list of strengths, each in (0, MAX_STRENGTH]."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,3, got {text!r}") from None
    if not all(0 < value <= MAX_STRENGTH for value in values):  # nan fails every comparison
        raise argparse.ArgumentTypeError(f"strengths must be numbers in (0, {MAX_STRENGTH:g}], got {text!r}")
    return values


def cmd_list(args: argparse.Namespace) -> int:
    """secateur list: every registry name the CLI and the API accept."""
    _print_registry("datasets", DATASETS)
    _print_registry("granularities", GRANULARITIES)
    for title, registry in _method_registries():
        _print_registry(title, registry)
    _print_registry("schedules", SCHEDULES)
    _print_registry("models", MODELS)
    print("  torchvision:<name>  any torchvision classification model, e.g. torchvision:resnet18")
    print("  package.module:fn   your own model factory")
    from secateur.export import EXPORT_FORMATS  # lazy: only this command and export list the formats

    _print_registry("export formats (secateur export --format, prune --exports)", EXPORT_FORMATS)
    return 0


def _print_registry(title: str, registry: Registry[Any]) -> None:
    print(f"{title}:")
    for name in registry.names():
        print(f"  {name:<18} {registry.describe(name)}")


def _method_registries() -> list[tuple[str, Registry[Any]]]:
    """Each distinct methods registry with the granularities that take it (``methods (weight, kernel)``)."""
    users: dict[int, tuple[Registry[Any], list[str]]] = {}
    for name in GRANULARITIES.names():
        registry = GRANULARITIES.get(name).methods
        users.setdefault(id(registry), (registry, []))[1].append(name)
    return [(f"methods (--granularity {'|'.join(names)})", registry) for registry, names in users.values()]


def add_distributed_arg(parser: argparse.ArgumentParser) -> None:
    """--distributed: one rank of a torchrun launch (the default whenever torchrun's WORLD_SIZE > 1)."""
    parser.add_argument("--distributed", action="store_true", default=None,
                        help="train data-parallel as one rank of 'torchrun --nproc-per-node N -m secateur ...' "
                             "(on by itself when torchrun's WORLD_SIZE > 1; alone it is a world of one)")


def _add_train(sub: SubParsers) -> None:
    train = sub.add_parser("train", help="train a dense baseline model")
    train.add_argument("--model", required=True, help="zoo name, torchvision:<name> or package.module:factory")
    add_weights_arg(train)
    add_data_args(train)
    train.add_argument("--out", type=Path, required=True, help="run folder for model.safetensors + model.json")
    add_force_arg(train, "a baseline")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_distributed_arg(train)
    add_train_args(train)
    train.set_defaults(func=cmd_train)


def _add_info(sub: SubParsers) -> None:
    info = sub.add_parser("info", help="per-layer shapes, parameters and MACs of a model or checkpoint")
    info.add_argument("model", help="zoo name, torchvision:<name>, or a checkpoint (.safetensors or run folder)")
    info.add_argument("--input-shape", type=shape, default=None,
                      help="C,H,W (default: the model's own: 3,224,224 for torchvision models, 1,28,28 for the zoo)")
    info.add_argument("--num-classes", type=classes, default=None,
                      help="classes (default: the model's own: 1000 for torchvision models, 10 for the zoo)")
    info.add_argument("--attention", default="heads",
                      help="what the structure line counts as an attention layer's channel: heads or head-dims")
    add_weights_arg(info)
    info.set_defaults(func=cmd_info)


def _add_prune(sub: SubParsers) -> None:
    prune = sub.add_parser("prune", help="prune to the smallest model within an accuracy drop bound")
    prune.add_argument("--model", help="zoo name, torchvision:<name> or package.module:factory (trains a baseline)")
    prune.add_argument("--from", dest="from_dir", type=existing_path, help="a trained baseline folder or checkpoint")
    add_weights_arg(prune)
    add_data_args(prune)
    prune.add_argument("--out", type=Path, required=True, help="run folder")
    prune.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out, with its saved settings")
    add_force_arg(prune, "a run")
    prune.add_argument("--quiet", action="store_true", help="no progress bars")
    add_distributed_arg(prune)
    add_search_args(prune)
    add_train_args(prune)
    prune.set_defaults(func=cmd_prune)


def _add_sweep(sub: SubParsers) -> None:
    sweep = sub.add_parser("sweep", help="trade-off curves of several methods on one plot")
    sweep.add_argument("--model", help="zoo name (trains a baseline first)")
    sweep.add_argument("--from", dest="from_dir", type=existing_path, help="a trained baseline folder")
    add_weights_arg(sweep)
    add_data_args(sweep)
    sweep.add_argument("--methods", default=",".join(DEFAULT_SWEEP_METHODS),
                       help=f"comma-separated weight methods (default {','.join(DEFAULT_SWEEP_METHODS)})")
    sweep.add_argument("--strengths", type=strengths, default=DEFAULT_STRENGTHS,
                       help="pruning strengths (about log2 of compression), default "
                            f"{','.join(f'{s:g}' for s in DEFAULT_STRENGTHS)}")
    sweep.add_argument("--retrain-epochs", type=epochs, default=2, help="per point (0: pruning alone)")
    sweep.add_argument("--schedule", choices=sweep_schedules(), default=DEFAULT_SCHEDULE,
                       help="iterative: each point continues the last; oneshot: each point from the dense "
                            f"baseline (default {DEFAULT_SCHEDULE})")
    sweep.add_argument("--test", action="store_true",
                       help="also measure each point's test accuracy (reported only: a sweep chooses nothing)")
    sweep.add_argument("--workers", type=positive_int, default=1,
                       help="processes computing the curves (one per method) in parallel; same points as 1")
    sweep.add_argument("--worker-threads", type=positive_int, default=1,
                       help="torch threads of each worker process (default 1)")
    sweep.add_argument("--out", type=Path, required=True)
    add_force_arg(sweep, "a sweep")
    sweep.add_argument("--quiet", action="store_true")
    sweep.set_defaults(func=cmd_sweep)


def _add_sensitivity(sub: SubParsers) -> None:
    sens = sub.add_parser("sensitivity", help="prune each layer alone; plot accuracy per layer")
    sens.add_argument("--from", dest="from_dir", type=existing_path, required=True, help="a trained baseline folder")
    sens.add_argument("--method", default=GRANULARITIES.get("weight").default_method,
                      help="a per-layer weight method (default: the weight granularity's)")
    sens.add_argument("--tolerance", type=non_negative_float, default=1.0,
                      help="accuracy points the layers may lose in total, each pruned alone (default 1.0)")
    sens.add_argument("--data-dir", type=Path, default=None)
    sens.add_argument("--out", type=Path, required=True)
    add_force_arg(sens, "a sensitivity analysis")
    sens.add_argument("--quiet", action="store_true")
    sens.set_defaults(func=cmd_sensitivity)


def _add_export(sub: SubParsers) -> None:
    from secateur.export import EXPORT_FORMATS  # lazy: the exporters load only when the parser is built

    export = sub.add_parser("export", help="write a pruned model for use outside secateur (dense, ...)")
    export.add_argument("source", type=existing_path, help="a run folder or a checkpoint")
    export.add_argument("--format", choices=EXPORT_FORMATS.names(), default="dense")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    export.add_argument("--option", type=option_pair, action="append", default=[], metavar="NAME=VALUE",
                        help="a format option (see docs)")
    export.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    export.set_defaults(func=cmd_export)


def _add_report_and_list(sub: SubParsers) -> None:
    report = sub.add_parser("report", help="re-render the report of a run folder")
    report.add_argument("run_dir", type=existing_path)
    report.set_defaults(func=cmd_report)
    listing = sub.add_parser("list", help="list dataset, model, method and schedule names")
    listing.set_defaults(func=cmd_list)


def build_parser() -> argparse.ArgumentParser:
    """The full ``secateur`` argument parser."""
    parser = _Parser(prog="secateur", description="Prune trained PyTorch networks within an accuracy drop bound.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_train, _add_info, _add_prune, _add_sweep, _add_sensitivity, _add_export, _add_report_and_list):
        add(sub)
    return parser


DISTRIBUTED_COMMANDS = ("train", "prune")  # the commands that run as ranks of a torchrun launch


def _processes(args: argparse.Namespace) -> contextlib.AbstractContextManager[bool]:
    """The process group of a torchrun launch for train and prune; other commands refuse one."""
    if args.command in DISTRIBUTED_COMMANDS:
        return session(args.distributed)
    if launched():
        raise ConfigError(f"secateur {args.command} runs in one process; launch it without torchrun "
                          f"(only {' and '.join(DISTRIBUTED_COMMANDS)} run as ranks; sweep has --workers)")
    return contextlib.nullcontext(False)


def _speaker() -> str:
    """``secateur``, or ``secateur[rank N]`` on the other ranks of a torchrun launch."""
    rank = os.environ.get("RANK", "0") if launched() else "0"
    return "secateur" if rank in ("", "0") else f"secateur[rank {rank}]"


def _version() -> str:
    return f"secateur {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secateur`` console script."""
    args = build_parser().parse_args(argv)
    try:
        with _processes(args):
            return args.func(args)
    except SecateurError as error:
        print(f"{_speaker()}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("secateur: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
