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

import yaml
from torch import nn

from secateur.errors import CheckpointError, ConfigError
from secateur.io.storage import (
    atomic_write_json,
    atomic_write_text,
    checkpoint_paths,
    load_model,
    read_json,
    save_model,
)

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
    """The configuration a run was started with."""
    try:
        return yaml.safe_load((out / CONFIG).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise CheckpointError(f"{out / CONFIG}: cannot be read ({error}); the run folder is damaged") from None


def write_history(out: Path, rows: list[dict]) -> None:
    """All rounds so far, one JSON object per line (rewritten whole, atomically)."""
    atomic_write_text(out / HISTORY, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def read_history(out: Path) -> list[dict]:
    """The rounds recorded in ``history.jsonl`` (empty if there are none yet)."""
    path = out / HISTORY
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: invalid JSON line ({error}); the run folder is damaged") from None


# ----------------------------------------------------------------------------- resumable rounds


def save_round(out: Path, model: nn.Module, state: Mapping, meta: Mapping | None = None) -> None:
    """Checkpoint the best model so far and the search state after a completed round.

    ``meta`` goes into the checkpoint header: the pruner's state (a structured run's ``plan``,
    which rebuilds it).
    """
    name = f"round-{state['round']}"
    save_model(model, out / STATE_DIR / name, {**dict(meta or {}), "search": dict(state)})
    previous = read_json(out / STATE)["checkpoint"] if (out / STATE).exists() else None
    atomic_write_json(out / STATE, {"checkpoint": name, "search": dict(state)})
    if previous and previous != name:
        for path in checkpoint_paths(out / STATE_DIR / previous):
            path.unlink(missing_ok=True)


def load_round(out: Path, template: nn.Module) -> tuple[nn.Module, dict, dict]:
    """The best model so far (loaded into ``template``), the search state to resume from, and
    the checkpoint's header (which holds the pruner's state, e.g. a structured run's ``plan``)."""
    state = read_json(out / STATE)
    model, meta = load_model(out / STATE_DIR / state["checkpoint"], model=template)
    return model, state["search"], meta


# ----------------------------------------------------------------------------- results and analyses


def write_results(out: Path, results: Mapping) -> None:
    """The run's summary (``results.json``)."""
    atomic_write_json(out / RESULTS, dict(results))


def read_results(out: Path) -> dict:
    """A finished run's ``results.json``; one-line errors for a missing folder or an unfinished run."""
    if not out.is_dir():
        raise CheckpointError(f"run directory {out} does not exist")
    results = read_json(out / RESULTS)
    missing = [key for key in FINISHED if key not in results]
    if missing:
        raise CheckpointError(f"{out / RESULTS} lacks {', '.join(missing)}: the run did not finish")
    return results


def read_model_meta(folder: Path) -> dict:
    """The JSON header of the checkpoint in ``folder`` (``model.json``: model, dataset, metrics)."""
    return read_json(folder / MODEL_META)


def write_sensitivity(out: Path, analysis: Mapping) -> None:
    """Per-layer sensitivity curves (``sensitivity.json``)."""
    atomic_write_json(out / SENSITIVITY, analysis)


def read_sensitivity(out: Path) -> dict | None:
    """The run's ``sensitivity.json``, or None when no sensitivity analysis was saved."""
    return read_json(out / SENSITIVITY) if (out / SENSITIVITY).is_file() else None


def write_sweep(out: Path, sweep: Mapping) -> Path:
    """A sweep's trade-off points (``sweep.json``); returns its path."""
    atomic_write_json(out / SWEEP, sweep)
    return out / SWEEP
