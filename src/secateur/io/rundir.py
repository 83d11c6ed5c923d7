"""The run directory of ``secateur prune``: every file name, path and reader of a run folder.

Every file is written atomically (temp file + rename), and the resumable state is a pair
``state/round-N.safetensors`` + ``state.json`` where ``state.json`` is replaced last, so a
kill at any moment leaves the previous complete round intact. The other modules name a run
folder's files through the constants and path functions here, never by literal. See
``docs/RUNDIR.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import yaml
from torch import nn

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
    atomic_write_json,
    atomic_write_text,
    check_header,
    checkpoint_paths,
    load_model,
    read_json,
    save_model,
)
from secateur.search.bracket import SearchState
from secateur.search.config import PRUNE_OPTIONS
from secateur.train import TRAIN_OPTIONS

CONFIG, HISTORY, STATE, RESULTS = "config.yaml", "history.jsonl", "state.json", "results.json"
STATE_DIR = "state"  # the checkpoints behind state.json: state/round-N.safetensors + .json
BASELINE = "baseline"  # sub-folder holding the dense baseline's checkpoint
MODEL = "model"  # checkpoint base name in a folder: model.safetensors + model.json
WEIGHTS, MODEL_META = f"{MODEL}.safetensors", f"{MODEL}.json"
SENSITIVITY, SENSITIVITY_PNG = "sensitivity.json", "sensitivity.png"
SWEEP, SWEEP_PNG = "sweep.json", "sweep.png"
TRADEOFF_PNG, LAYERS_PNG = "tradeoff.png", "layers.png"
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


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse to mix a new run into an existing one; ``--resume`` needs an existing one."""
    started = (out / STATE).exists() or (out / RESULTS).exists()
    if resume and not (out / STATE).exists():
        raise CheckpointError(f"{out} holds no interrupted run to resume (no {STATE}); drop --resume")
    if not resume and started:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")


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
