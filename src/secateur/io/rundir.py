"""The run directory of ``secateur prune``: config, history, resumable state, results.

Every file is written atomically (temp file + rename), and the resumable state is a pair
``state/round-N.safetensors`` + ``state.json`` where ``state.json`` is replaced last, so a
kill at any moment leaves the previous complete round intact. See ``docs/RUNDIR.md``.
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
    load_model,
    read_json,
    save_model,
)

CONFIG, HISTORY, STATE, RESULTS = "config.yaml", "history.jsonl", "state.json", "results.json"
SENSITIVITY = "sensitivity.json"


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


def save_state(out: Path, model: nn.Module, state: Mapping, meta: Mapping | None = None) -> None:
    """Checkpoint the last accepted model and the search state after a completed round.

    ``meta`` goes into the checkpoint header (a structured run's ``plan``, which rebuilds it).
    """
    name = f"round-{state['round']}"
    save_model(model, out / "state" / name, {**dict(meta or {}), "search": dict(state)})
    previous = read_json(out / STATE)["checkpoint"] if (out / STATE).exists() else None
    atomic_write_json(out / STATE, {"checkpoint": name, "search": dict(state)})
    if previous and previous != name:
        for suffix in (".safetensors", ".json"):
            (out / "state" / f"{previous}{suffix}").unlink(missing_ok=True)


def load_state(out: Path, template: nn.Module) -> tuple[nn.Module, dict, dict | None]:
    """The accepted model (loaded into ``template``), the search state to resume from, and the
    structured plan of the accepted model (None for unstructured runs)."""
    state = read_json(out / STATE)
    model, meta = load_model(out / "state" / state["checkpoint"], model=template)
    return model, state["search"], meta.get("plan")


def write_results(out: Path, results: Mapping) -> None:
    """The run's summary (``results.json``)."""
    atomic_write_json(out / RESULTS, dict(results))
