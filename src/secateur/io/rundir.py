"""The run directory of ``secateur prune``: every file name, path and reader of a run folder.

Every file is written atomically (temp file + rename), and the resumable state is a pair
``state/round-N.safetensors`` + ``state.json`` where ``state.json`` is replaced last, so a
kill at any moment leaves the previous complete round intact. The other modules name a run
folder's files through the constants and path functions here, never by literal. See
``docs/RUNDIR.md``.

It is also the one home of the ownership rule for every folder secateur writes into
(:func:`check_out`, :func:`claim`): a command writes only into a new or empty folder, or one
holding its own kind of output (``.secateur.json`` says which, whether it finished, and which
files it wrote); ``--force`` replaces such an output, deleting only the files it lists.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import safetensors
import safetensors.torch
import torch
import yaml
from torch import nn

from secateur import __version__
from secateur.errors import CheckpointError, ConfigError
from secateur.io.schemas import (
    RUN_HINT,
    ConfigFile,
    HistoryRow,
    OptionsSchema,
    ResultsFile,
    SensitivityFile,
    StateFile,
    check,
    read_yaml,
)
from secateur.io.storage import (
    FORMAT,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_header,
    checkpoint_paths,
    is_other_format,
    load_model,
    read_json,
    save_model,
)
from secateur.search.bracket import SearchState
from secateur.search.config import PRUNE_OPTIONS
from secateur.train import TRAIN_OPTIONS
from secateur.unstructured.masks import effective_state_dict

CONFIG, HISTORY, STATE, RESULTS = "config.yaml", "history.jsonl", "state.json", "results.json"
STATE_DIR = "state"  # the checkpoints behind state.json: state/round-N.safetensors + .json
LEARNED = f"{STATE_DIR}/learned"  # a learned method's phase (.safetensors + .json): a resumed run reuses it
BASELINE = "baseline"  # sub-folder holding the dense baseline's checkpoint
MODEL = "model"  # checkpoint base name in a folder: model.safetensors + model.json
WEIGHTS, MODEL_META = f"{MODEL}.safetensors", f"{MODEL}.json"
COMPACT = f"{MODEL}.compact"  # the chosen model as a compact export (secateur.export.compact), real bytes
ONNX = f"{MODEL}.onnx"  # the chosen model as an ONNX export, when the run's ``exports`` name onnx


def export_file(out: Path, suffix: str) -> Path:
    """Where a run writes its chosen model in an export format of this file ``suffix``."""
    return out / f"{MODEL}{suffix}"
SENSITIVITY, SENSITIVITY_PNG = "sensitivity.json", "sensitivity.png"
SWEEP, SWEEP_PNG = "sweep.json", "sweep.png"
TRADEOFF_PNG, LAYERS_PNG = "tradeoff.png", "layers.png"
PARETO_PNG = "pareto.png"  # the run's point beside published results (models that have some)
REPORT, SWEEP_REPORT = "report", "sweep"  # stems of report.md / report.html and sweep.md / sweep.html
FINISHED = ("baseline", "pruned", "params", "compression", "layers")  # keys every finished results.json holds
SEARCH_STATE: OptionsSchema[SearchState] = OptionsSchema(  # state.json's "search"; "accepted": before 0.2
    SearchState, required=("round",), renamed={"accepted": "best_strength"}, bounded=False)

# ----------------------------------------------------------------------------- paths


def baseline_dir(out: Path) -> Path:
    """The folder of the dense baseline a run started from (``out/baseline``)."""
    return out / BASELINE


def model_base(folder: Path) -> Path:
    """The checkpoint base path in a folder (``folder/model``, for ``model.safetensors`` + ``model.json``)."""
    return folder / MODEL


def checkpoint_base(path: Path) -> Path:
    """The checkpoint base of a run folder (``path/model``) or of a checkpoint file (suffix dropped)."""
    return model_base(path) if path.is_dir() else path.with_suffix("")


def has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a saved model (its ``model.safetensors``)."""
    return (folder / WEIGHTS).exists()


def report_paths(out: Path, stem: str = REPORT) -> dict[str, Path]:
    """``{"md": out/<stem>.md, "html": out/<stem>.html}``: the report files of a run (or sweep)."""
    return {"md": out / f"{stem}.md", "html": out / f"{stem}.html"}


# ----------------------------------------------------------------------------- config and history


def write_config(out: Path, config: Mapping) -> None:
    """The resolved configuration as YAML."""
    atomic_write_text(out / CONFIG, yaml.safe_dump(dict(config), sort_keys=False))


def read_config(out: Path) -> dict:
    """The configuration a run was started with (as written), checked: its layout
    (:class:`~secateur.io.schemas.ConfigFile`) and the keys and types of its ``prune`` (and
    ``train``) options; a damaged file is a one-line CheckpointError naming the key."""
    path = out / CONFIG
    data = read_yaml(path, hint=RUN_HINT)
    config = check(ConfigFile, data, path, hint=RUN_HINT)
    PRUNE_OPTIONS.parse(config.prune, path, at="prune", hint=RUN_HINT, error=CheckpointError)
    if config.train is not None:
        TRAIN_OPTIONS.parse(config.train, path, at="train", hint=RUN_HINT, error=CheckpointError)
    return cast(dict, data)  # ConfigFile accepted it: a mapping


def write_history(out: Path, rows: list[dict]) -> None:
    """All rounds so far, one JSON object per line (rewritten whole, atomically)."""
    atomic_write_text(out / HISTORY, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def read_history(out: Path) -> list[dict]:
    """The rounds recorded in ``history.jsonl`` (empty if there are none yet), each row checked
    (:class:`~secateur.io.schemas.HistoryRow`); errors name the line and the key."""
    path = out / HISTORY
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"cannot read {path} ({type(error).__name__}); {RUN_HINT}") from None
    return [_history_row(line, f"{path} line {number}") for number, line in enumerate(lines, 1) if line.strip()]


def _history_row(line: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{where}: invalid JSON ({error.msg}); {RUN_HINT}") from None
    if not isinstance(row, dict):
        raise CheckpointError(f"{where}: holds a JSON {type(row).__name__}, expected an object; {RUN_HINT}")
    check(HistoryRow, row, where, hint=RUN_HINT)
    return row


# ----------------------------------------------------------------------------- resumable rounds


def save_round(out: Path, model: nn.Module, state: Mapping, meta: Mapping | None = None) -> None:
    """Checkpoint the best model so far and the search state after a completed round.

    ``meta`` goes into the checkpoint header: the pruner's state (a structured run's ``plan``,
    which rebuilds it).
    """
    name = f"round-{state['round']}"
    save_model(model, out / STATE_DIR / name, {**dict(meta or {}), "search": dict(state)})
    previous = read_state(out)["checkpoint"] if (out / STATE).exists() else None
    atomic_write_json(out / STATE, {"checkpoint": name, "search": dict(state)})
    if previous and previous != name:
        for path in checkpoint_paths(out / STATE_DIR / previous):
            path.unlink(missing_ok=True)


def read_state(out: Path) -> dict:
    """``state.json``, checked (:class:`~secateur.io.schemas.StateFile`, the search state's fields);
    its ``search`` comes back with today's key names (``accepted`` was ``best_strength`` before 0.2)."""
    path = out / STATE
    state = read_json(path)
    check(StateFile, state, path, hint=RUN_HINT)
    SEARCH_STATE.parse(state["search"], path, at="search", hint=RUN_HINT, error=CheckpointError)
    return {**state, "search": SEARCH_STATE.upgraded(state["search"])}


def load_round(out: Path, template: nn.Module) -> tuple[nn.Module, dict, dict]:
    """The best model so far (loaded into ``template``), the search state to resume from, and
    the checkpoint's header (which holds the pruner's state, e.g. a structured run's ``plan``)."""
    state = read_state(out)
    model, meta = load_model(out / STATE_DIR / state["checkpoint"], model=template)
    return model, state["search"], meta


def save_learned(out: Path, key: Mapping, weights: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                 info: Mapping) -> None:
    """Keep a learned method's phase (its weights, scores and info) for a resumed run; ``key`` says
    what it was learned from (method, epochs, penalty, baseline digest), so a mismatch is never reused."""
    tensors = {**{f"w.{k}": v.detach().cpu().contiguous() for k, v in weights.items()},
               **{f"s.{k}": v.detach().cpu().contiguous() for k, v in scores.items()}}
    atomic_write_bytes(out / f"{LEARNED}.safetensors", safetensors.torch.save(tensors))
    atomic_write_json(out / f"{LEARNED}.json", {"key": dict(key), "info": dict(info)})


def load_learned(out: Path, key: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict] | None:
    """The phase :func:`save_learned` kept under the same ``key`` (weights, scores, info), else None
    (none kept, another key, or a file that does not read: the phase then runs again)."""
    paths = out / f"{LEARNED}.safetensors", out / f"{LEARNED}.json"
    if not all(path.is_file() for path in paths):
        return None
    try:
        meta = json.loads(paths[1].read_text())
        if meta.get("key") != json.loads(json.dumps(dict(key))):
            return None
        tensors = safetensors.torch.load(paths[0].read_bytes())
    except (OSError, ValueError, safetensors.SafetensorError):
        return None
    return ({k[2:]: v for k, v in tensors.items() if k.startswith("w.")},
            {k[2:]: v for k, v in tensors.items() if k.startswith("s.")}, dict(meta.get("info") or {}))


# ----------------------------------------------------------------------------- results and analyses


def write_results(out: Path, results: Mapping) -> None:
    """The run's summary (``results.json``)."""
    atomic_write_json(out / RESULTS, dict(results))


def read_results(out: Path) -> dict:
    """A finished run's ``results.json``, checked (:class:`~secateur.io.schemas.ResultsFile`);
    one-line errors for a missing folder, an unfinished run or a damaged file."""
    if not out.is_dir():
        raise CheckpointError(f"run directory {out} does not exist")
    results = read_json(out / RESULTS)
    missing = [key for key in FINISHED if key not in results]
    if missing:
        raise CheckpointError(f"{out / RESULTS} lacks {', '.join(missing)}: the run did not finish")
    check(ResultsFile, results, out / RESULTS, hint=RUN_HINT)
    return results


def read_model_meta(folder: Path) -> dict:
    """The JSON header of the checkpoint in ``folder`` (``model.json``: model, dataset, metrics), checked."""
    meta = read_json(folder / MODEL_META)
    check_header(meta, folder / MODEL_META)
    return meta


def write_sensitivity(out: Path, analysis: Mapping) -> None:
    """Per-layer sensitivity curves (``sensitivity.json``)."""
    atomic_write_json(out / SENSITIVITY, analysis)


def read_sensitivity(out: Path) -> dict | None:
    """The run's ``sensitivity.json``, or None when no sensitivity analysis was saved."""
    if not (out / SENSITIVITY).is_file():
        return None
    analysis = read_json(out / SENSITIVITY)
    check(SensitivityFile, analysis, out / SENSITIVITY, hint="delete it or run 'secateur sensitivity' again")
    return analysis


def write_sweep(out: Path, sweep: Mapping) -> Path:
    """A sweep's trade-off points (``sweep.json``); returns its path."""
    atomic_write_json(out / SWEEP, sweep)
    return out / SWEEP


# ----------------------------------------------------------------------------- who owns an output folder

MARKER = ".secateur.json"  # in every folder a command writes: its kind, finished or not, the files it writes
MARKER_FORMAT = "secateur.output"
KINDS = ("train", "prune", "sweep", "sensitivity")
RESUMABLE = frozenset({"prune"})
_BASELINE_FILES = (f"{BASELINE}/{WEIGHTS}", f"{BASELINE}/{MODEL_META}", f"{BASELINE}/{MARKER}")
OUTPUTS: dict[str, tuple[str, ...]] = {  # what each kind of command writes (glob patterns, relative)
    "train": (WEIGHTS, MODEL_META),
    "prune": (CONFIG, HISTORY, STATE, f"{STATE_DIR}/round-*.safetensors", f"{STATE_DIR}/round-*.json",
              f"{LEARNED}.safetensors", f"{LEARNED}.json",
              RESULTS, WEIGHTS, MODEL_META, COMPACT, ONNX, SENSITIVITY, SENSITIVITY_PNG, f"{REPORT}.md",
              f"{REPORT}.html", TRADEOFF_PNG, LAYERS_PNG, PARETO_PNG, *_BASELINE_FILES),
    "sweep": (SWEEP, SWEEP_PNG, f"{SWEEP_REPORT}.md", f"{SWEEP_REPORT}.html", *_BASELINE_FILES),
    "sensitivity": (SENSITIVITY, SENSITIVITY_PNG),
}


@dataclass(frozen=True)
class Output:
    """What secateur wrote in a folder: its kind, whether it finished, and the files it lists."""

    kind: str
    finished: bool
    files: tuple[str, ...]
    record: dict = field(default_factory=dict)  # the marker's contents; {} for a folder from before markers


@dataclass
class Claim:
    """A folder a command has claimed for its output (see :func:`claim`)."""

    out: Path
    kind: str
    record: dict
    resumed: bool  # an unfinished run of this kind is being continued
    created: list[Path]  # the folders this claim made, deepest first
    fresh: bool  # this claim wrote the marker

    def note(self, **fields: object) -> None:
        """Record more about the output in its marker (e.g. the baseline's ``baseline_sha256``)."""
        self.record.update(fields)
        atomic_write_json(self.out / MARKER, self.record)


_ACTIVE: dict[Path, Claim] = {}  # the folders claimed by this process right now


def find_output(folder: Path) -> Output | None:
    """The secateur output in ``folder``: its marker's, else one recognised from before markers, else None."""
    path = folder / MARKER
    if not path.is_file():
        return _legacy(folder)
    record = read_json(path)
    kind, finished, files = record.get("kind"), record.get("finished"), record.get("files")
    if (kind not in KINDS or not isinstance(finished, bool) or not isinstance(files, list)
            or not all(isinstance(name, str) and _safe(name) for name in files)):
        raise CheckpointError(f"{path} is damaged (it must name a kind of {', '.join(KINDS)}, 'finished' and "
                              "the 'files' written there); restore it, or choose another --out")
    return Output(str(kind), finished, tuple(files), record)


def _legacy(folder: Path) -> Output | None:
    """An output written before markers: a run (config.yaml + state.json), a sweep, a sensitivity, a baseline."""
    if (folder / CONFIG).is_file() and ((folder / STATE).is_file() or has_checkpoint(baseline_dir(folder))):
        return Output("prune", _finished(folder), OUTPUTS["prune"])
    for kind, name in (("sweep", SWEEP), ("sensitivity", SENSITIVITY)):
        if (folder / name).is_file():
            return Output(kind, True, OUTPUTS[kind])
    if has_checkpoint(folder) and _trained(folder / MODEL_META):
        return Output("train", True, OUTPUTS["train"])
    return None


def _finished(folder: Path) -> bool:
    try:
        return all(key in read_json(folder / RESULTS) for key in FINISHED)
    except CheckpointError:
        return False


def _trained(meta: Path) -> bool:
    """Whether ``meta`` is the header of a baseline ``secateur train`` saved."""
    try:
        header = read_json(meta)
    except CheckpointError:
        return False
    return header.get("format") == FORMAT and isinstance(header.get("train"), dict)


def _safe(name: str) -> bool:
    """A relative pattern inside the folder (a hand-edited marker cannot reach outside it)."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and "**" not in name


def check_out(out: str | Path, kind: str, *, resume: bool = False, force: bool = False,
              source: str | Path | None = None) -> Output | None:
    """Refuse, with one line, an ``--out`` that ``kind`` may not write into; changes nothing.

    Allowed: a folder that does not exist yet (and can be created), an empty folder, or one
    holding ``kind``'s own output: unfinished with ``resume`` (prune only), or with ``force``
    (replaced). Returns that output (None for a new or empty folder). ``source`` is the
    ``--from`` path, which ``out`` must not be, nor hold (unless resuming).
    """
    out = Path(out)
    if resume and force:
        raise ConfigError("--resume and --force exclude each other: --resume continues the run in --out, "
                          "--force replaces it; give one")
    if resume and kind not in RESUMABLE:
        raise ConfigError(f"secateur {kind} cannot resume; run it again with --force")
    _check_source(out, source, resume)
    if not _is_dir(out):
        _check_creatable(out)
        if resume:
            raise ConfigError(f"{out} does not exist, so there is no run to resume; drop --resume")
        return None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"{out} is read-only; choose a folder you can write to for --out")
    found = find_output(out)
    if found is None:
        _check_empty(out, kind, resume, force)
        return None
    return _check_own(out, kind, found, resume, force)


def _check_source(out: Path, source: str | Path | None, resume: bool) -> None:
    """``--from`` must not be ``--out``, nor (outside a resume) lie inside it."""
    if source is None:
        return
    src = Path(source)
    folder = (src if src.is_dir() else src.parent).resolve()
    target = out.resolve()
    if folder == target:
        raise ConfigError(f"--out {out} is the --from folder; give the new output its own --out")
    if not resume and target in folder.parents:
        raise ConfigError(f"--from {source} lies inside --out {out}; give the new output its own --out")


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, with the paths the OS refuses to look at as one-line errors."""
    try:
        return path.is_dir()
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot use {str(path)[:80]!r} as --out ({_reason(error)}); choose another folder") from None


def _reason(error: BaseException) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error).splitlines()[0]


def _check_creatable(out: Path) -> None:
    """``out`` is not a file, the nearest folder above it is a folder we may write in, and the
    first missing folder can be made (tried, and removed again)."""
    if out.exists():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a folder")
    missing = out.absolute()
    for parent in missing.parents:
        if not parent.exists():
            missing = parent
            continue
        if not parent.is_dir():
            raise ConfigError(f"--out {out} lies under the file {parent}, which cannot hold folders; "
                              "choose another --out")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot create --out {out}: {parent} is read-only; choose another --out")
        try:
            missing.mkdir()
            missing.rmdir()
        except OSError as error:
            raise ConfigError(f"cannot create --out {out} ({_reason(error)}); choose another --out") from None
        return


def _check_empty(out: Path, kind: str, resume: bool, force: bool) -> None:
    """A folder without secateur's output: fine if empty (and not resuming)."""
    entries = sorted(path.name for path in out.iterdir())
    if resume:
        where = " in a new or empty folder" if entries else ""
        raise ConfigError(f"{out} holds no {kind} run to resume; start one without --resume{where}")
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        if has_checkpoint(baseline_dir(out)):
            raise ConfigError(f"{out} holds a baseline ({baseline_dir(out)}) but no {kind} output; "
                              f"give --from {baseline_dir(out)} and a new --out")
        extra = " (--force replaces only secateur's own output)" if force else ""
        raise ConfigError(f"{out} holds files secateur did not write ({shown}); "
                          f"choose a new or empty --out{extra}")


def _check_own(out: Path, kind: str, found: Output, resume: bool, force: bool) -> Output:
    """A folder holding secateur's output: only its own kind, unfinished (resume) or replaced (force)."""
    noun = "run" if kind in RESUMABLE else "output"
    if found.kind != kind:
        raise ConfigError(f"{out} holds the output of secateur {found.kind}, not of secateur {kind}; "
                          f"choose another --out")
    if resume and found.finished:
        raise ConfigError(f"the {kind} run in {out} has finished: there is nothing to resume (its report: "
                          f"{report_paths(out)['html']}); drop --resume and pass --force to run it again")
    if resume or force:
        return found
    if found.finished:
        raise ConfigError(f"a finished {kind} {noun} already exists in {out}; "
                          "pass --force to replace it or choose another --out")
    if kind in RESUMABLE:
        raise ConfigError(f"{out} holds an unfinished {kind} run; pass --resume to continue it, "
                          "--force to start it over, or choose another --out")
    raise ConfigError(f"{out} holds an interrupted {kind} output; pass --force to start it over "
                      "or choose another --out")


@contextmanager
def claim(out: str | Path, kind: str, *, resume: bool = False, force: bool = False,
          source: str | Path | None = None) -> Iterator[Claim]:
    """Claim ``out`` for ``kind``'s output while the block runs (the rule: :func:`check_out`).

    Creates the folder and writes its marker (unfinished), after deleting, with ``force``, the
    files of the output it replaces. The marker is marked finished when the block ends; if the
    block fails before writing anything, the marker and the folders made for it are removed
    again. A claim of a folder this process already holds (``prune_run`` then ``prune``)
    shares the outer one.
    """
    key = Path(out).resolve()
    if key in _ACTIVE:
        if _ACTIVE[key].kind != kind:
            raise ConfigError(f"{out} is being written by secateur {_ACTIVE[key].kind}; choose another --out")
        yield _ACTIVE[key]
        return
    taken = _take(Path(out), kind, check_out(out, kind, resume=resume, force=force, source=source), resume)
    _ACTIVE[key] = taken
    try:
        yield taken
    except BaseException:
        _release(taken)
        raise
    finally:
        del _ACTIVE[key]
    taken.record["finished"] = True
    atomic_write_json(taken.out / MARKER, taken.record)


def _take(out: Path, kind: str, found: Output | None, resume: bool) -> Claim:
    """Make the folder, replace an old output (force), and write the marker (a resumed run's
    is left as it is until the run records something or finishes)."""
    created = _make_dirs(out)
    if found is not None and resume:
        record = found.record or _new_record(kind)  # a run from before markers gets one as it goes
        return Claim(out, kind, record, resumed=True, created=created, fresh=False)
    if found is not None:
        remove_output(out, found)
    record = _new_record(kind)
    try:
        atomic_write_json(out / MARKER, record)
    except OSError as error:
        _remove_dirs(created)
        raise ConfigError(f"cannot write into {out} ({_reason(error)}); choose another --out") from None
    return Claim(out, kind, record, resumed=False, created=created, fresh=True)


def _new_record(kind: str) -> dict:
    return {"format": MARKER_FORMAT, "kind": kind, "finished": False, "files": list(OUTPUTS[kind]),
            "secateur": __version__}


def _make_dirs(out: Path) -> list[Path]:
    """Create ``out`` and the missing folders above it; returns those made, deepest first."""
    missing = [path for path in (out, *out.parents) if not path.exists()]
    made: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            made.insert(0, path)
    except OSError as error:
        _remove_dirs(made)
        raise ConfigError(f"cannot create --out {out} ({_reason(error)}); choose another --out") from None
    return made


def _remove_dirs(folders: list[Path]) -> None:
    """Remove the (empty) folders a claim made, deepest first."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # something else was put there: keep it


def _release(taken: Claim) -> None:
    """After a failure: a marker with nothing beside it goes again, with the folders made for it."""
    if taken.fresh and [path.name for path in taken.out.iterdir()] == [MARKER]:
        (taken.out / MARKER).unlink()
        _remove_dirs(taken.created)


def remove_output(out: Path, found: Output) -> None:
    """Delete the files an output lists (and their leftover temp files), its marker, and the
    sub-folders that leaves empty; nothing else in ``out`` is touched."""
    folders: set[Path] = set()
    for pattern in found.files:
        if not _safe(pattern):
            continue
        target = out / pattern
        temps = target.parent.glob(f".{target.name}.*.tmp") if target.parent.is_dir() else iter(())
        for path in [*out.glob(pattern), *temps]:
            if path.is_file() or path.is_symlink():
                path.unlink()
        folders.add(target.parent)
    (out / MARKER).unlink(missing_ok=True)
    for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
        if folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


# ----------------------------------------------------------------------------- what a folder holds


def weights_sha256(model: nn.Module) -> str:
    """A sha256 of a model's effective weights and buffers (names, dtypes, shapes, values).

    It identifies the baseline a run started from: the same for the model as trained, as saved
    and reloaded, or masked with nothing pruned yet.
    """
    digest = hashlib.sha256()
    for name, value in sorted(effective_state_dict(model).items()):
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(value.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def baseline_sha256(out: Path) -> str | None:
    """The weights digest of the baseline the run in ``out`` started from: its marker's, else (a run
    from before markers) that of its ``baseline/`` copy; None if neither is there."""
    found = find_output(out) if out.is_dir() else None
    recorded = found.record.get("baseline_sha256") if found is not None else None
    if isinstance(recorded, str):
        return recorded
    if has_checkpoint(baseline_dir(out)):
        return weights_sha256(load_model(model_base(baseline_dir(out)))[0])
    return None


def checkpoint_in(path: str | Path) -> Path:
    """The checkpoint base of a checkpoint file or of a folder holding one; else a one-line error
    that says what ``path`` is instead."""
    path = Path(path)
    if path.is_dir():
        if has_checkpoint(path) or (path / MODEL_META).is_file():
            return model_base(path)
        found = find_output(path)
        held = f": it holds the output of secateur {found.kind}" if found is not None else f" (no {WEIGHTS})"
        base = f"; its baseline is {baseline_dir(path)}" if has_checkpoint(baseline_dir(path)) else ""
        raise CheckpointError(f"no checkpoint in {path}{held}{base}; give a checkpoint or a folder holding one")
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix("")
    if is_other_format(path):
        return path  # a one-file model (a compact export): load_model reads it as it is
    if path.exists():
        raise CheckpointError(f"{path} is not a checkpoint (a .safetensors or .json file); "
                              "give a checkpoint or a folder holding one")
    raise CheckpointError(f"{path} does not exist; give a checkpoint or a folder holding one")


def check_report(run: Path) -> None:
    """``secateur report`` writes only into a finished prune run folder secateur made."""
    if not run.is_dir():
        raise ConfigError(f"{run} is a file, not a run folder; give the folder of a 'secateur prune' run")
    found = find_output(run)
    if found is None:
        raise ConfigError(f"{run} is not a run folder secateur made (no {MARKER} or {CONFIG}); "
                          "give the folder of a 'secateur prune' run")
    if found.kind != "prune":
        raise ConfigError(f"{run} holds the output of secateur {found.kind}, not a prune run; "
                          "give the folder of a 'secateur prune' run")
    if not found.finished:
        raise CheckpointError(f"the run in {run} has not finished; finish it with "
                              f"'secateur prune --out {run} --resume', then report it")
