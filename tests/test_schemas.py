"""Every file secateur reads is checked against its schema, and every number against its range.

A damaged or hand-edited file (a key deleted, a wrong type, an unknown key, a string for a number,
not an object, truncated) is a one-line SecateurError naming the file and the key, from the
Python readers and from the CLI (exit 2, one stderr line, the file left as it was). Numbers
out of range (a seed beyond 64 bits, a learning rate beyond float32, nan / inf, an absurd shift
or epoch count) are one-line errors from the CLI flags and from the API.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from torch import nn

from secateur.analysis.sweep import sweep
from secateur.app.cli import main
from secateur.app.recipe import read_recipe
from secateur.errors import ConfigError, SecateurError
from secateur.io import rundir
from secateur.io.storage import load_model
from secateur.search.config import PruneConfig
from secateur.train import TrainConfig, fit
from secateur.zoo.data import load_dataset
from secateur.zoo.models import build_model
from test_cli import assert_one_line_error, run_cli

RUN = ("prune", "--dataset", "digits", "--model", "lenet300", "--epochs", "1", "--rounds", "1",
       "--retrain-epochs", "1", "--polish-epochs", "0", "--quiet")
DELETE, TEXT = object(), object()  # edits: remove the key; replace the whole file by a text
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run folder (weight pruning of LeNet-300 on digits), made once for the module."""
    out = tmp_path_factory.mktemp("schemas") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def folder(run_folder: Path, tmp_path: Path) -> Path:
    """A copy of the run folder, to damage."""
    return Path(shutil.copytree(run_folder, tmp_path / "run"))


def _set(data: Any, keys: tuple, value: object) -> None:
    *parents, last = keys
    for key in parents:
        data = data[key]
    if value is DELETE:
        del data[last]
    else:
        data[last] = value


def damage(path: Path, keys: tuple | object, value: object) -> None:
    """Edit one key of a JSON / YAML / JSON-lines file (``keys[0]`` is the row of a .jsonl), or
    replace the whole file's text (``keys is TEXT``)."""
    if keys is TEXT:
        path.write_text(str(value))
        return
    assert isinstance(keys, tuple)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        _set(rows, keys, value)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".yaml":
        data = yaml.safe_load(path.read_text())
        _set(data, keys, value)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        data = json.loads(path.read_text())
        _set(data, keys, value)
        path.write_text(json.dumps(data))


def assert_one_line(error: BaseException, *fragments: str) -> None:
    text = str(error)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, text


def _template() -> nn.Module:
    return build_model("lenet300", input_shape=(1, 8, 8), num_classes=10)


READERS: dict[str, Callable[[Path], object]] = {
    rundir.CONFIG: rundir.read_config,
    rundir.STATE: lambda folder: rundir.load_round(folder, _template()),
    rundir.MODEL_META: lambda folder: load_model(rundir.model_base(folder)),
    "baseline/model.json": lambda folder: load_model(rundir.model_base(rundir.baseline_dir(folder))),
    rundir.RESULTS: rundir.read_results,
    rundir.HISTORY: rundir.read_history,
}

FILE_CASES = [
    # config.yaml: its layout, and the prune options by PruneConfig's own fields
    ("config.yaml", ("prune",), DELETE, "prune: required key missing"),
    ("config.yaml", ("baseline_val",), DELETE, "baseline_val: required key missing"),
    ("config.yaml", ("baseline_val",), "0.36", "baseline_val: expected a number, got '0.36'"),
    ("config.yaml", ("prune", "max_drop"), "abc", "prune.max_drop: expected a number, got 'abc'"),
    ("config.yaml", ("prune", "rounds"), "3", "prune.rounds: expected a whole number, got '3'"),
    ("config.yaml", ("prune", "rounds"), 2.5, "prune.rounds: expected a whole number"),
    ("config.yaml", ("prune", "max_dorp"), 0.2, "prune.max_dorp: unknown key"),
    ("config.yaml", ("prune", "include_bias"), "no", "prune.include_bias: expected true or false"),
    ("config.yaml", ("prune", "max_drop"), NAN, "prune.max_drop: expected a finite number"),
    ("config.yaml", ("prune", "seed"), 10**30, "prune.seed: expected a whole number <="),
    ("config.yaml", ("prune", "factors", "fc1.weight"), "big", "prune.factors.fc1.weight: expected a number"),
    ("config.yaml", ("prune", "targets"), "fc1.weight", "prune.targets: expected a list"),
    ("config.yaml", ("prune",), [1, 2], "prune: expected a mapping"),
    ("config.yaml", ("model",), 3, "model: expected a mapping"),
    ("config.yaml", ("model", "name"), DELETE, "model.name: required key missing"),
    ("config.yaml", ("model", "args", "input_shape"), "1x8x8", "model.args.input_shape: expected a list"),
    ("config.yaml", ("dataset",), 7, "dataset: expected a string or a mapping, got 7"),
    ("config.yaml", ("train",), {"lr": "fast"}, "train.lr: expected a number, got 'fast'"),
    ("config.yaml", TEXT, "- prune\n- model\n", "expected a mapping, got a list"),
    ("config.yaml", TEXT, "prune:\n  max_drop: [0.1,\n", "is not valid YAML at line"),
    # state.json: the checkpoint name and SearchState's fields
    ("state.json", ("checkpoint",), DELETE, "checkpoint: required key missing"),
    ("state.json", ("search",), DELETE, "search: required key missing"),
    ("state.json", ("search", "round"), DELETE, "search.round: required key missing"),
    ("state.json", ("search", "round"), "1", "search.round: expected a whole number, got '1'"),
    ("state.json", ("search", "round"), 1.5, "search.round: expected a whole number"),
    ("state.json", ("search", "best_strength"), "0", "search.best_strength: expected a number"),
    ("state.json", ("search", "failed"), [2.0], "search.failed: expected a number"),
    ("state.json", ("search", "bracket"), 1, "search.bracket: unknown key"),
    ("state.json", ("note",), "hi", "note: unknown key"),
    ("state.json", ("checkpoint",), "../../elsewhere", "checkpoint: expected a string to match"),
    ("state.json", ("checkpoint",), 1, "checkpoint: expected a string"),
    ("state.json", ("search",), "round 1", "search: expected a mapping"),
    ("state.json", TEXT, "[1, 2]", "expected an object"),
    ("state.json", TEXT, '{"checkpoint": "round-1", "sea', "not valid JSON"),
    # model.json: the checkpoint header
    ("model.json", ("format_version",), DELETE, "lacks format_version"),
    ("model.json", ("format_version",), "1", "format_version: expected a whole number, got '1'"),
    ("model.json", ("format_version",), 1.0, "format_version: expected a whole number"),
    ("model.json", ("masks",), "fc1.weight", "masks: expected a list"),
    ("model.json", ("masks", 0), 1, "masks.0: expected a string"),
    ("model.json", ("tensors",), "9", "tensors: expected a whole number, got '9'"),
    ("model.json", ("tensors",), -1, "tensors: expected a whole number >= 0"),
    ("model.json", ("sha256",), 12345, "sha256: expected a string"),
    ("model.json", ("model", "name"), 3, "model.name: expected a string"),
    ("model.json", ("model", "args"), [1, 8, 8], "model.args: expected a mapping"),
    ("model.json", ("model", "args", "num_classes"), "10", "model.args.num_classes: expected a whole number"),
    ("model.json", ("metrics",), [0.3], "metrics: expected a mapping"),
    ("model.json", ("metrics", "val", "accuracy"), "high", "metrics.val.accuracy: expected a number"),
    ("model.json", ("plan",), "channels", "plan: expected a mapping"),
    ("model.json", TEXT, '"secateur.checkpoint"', "expected an object"),
    ("model.json", TEXT, '{"format": "secateur.checkpoint", "format_', "not valid JSON"),
    # baseline/model.json: the training recipe, by TrainConfig's own fields
    ("baseline/model.json", ("train", "lr"), "0.05", "train.lr: expected a number, got '0.05'"),
    ("baseline/model.json", ("train", "learning_rate"), 0.1, "train.learning_rate: unknown key"),
    ("baseline/model.json", ("train", "epochs"), 1.5, "train.epochs: expected a whole number"),
    ("baseline/model.json", ("train", "seed"), 10**30, "train.seed: expected a whole number <="),
    ("baseline/model.json", ("train", "lr"), 1e39, "train.lr: expected a number <="),
    ("baseline/model.json", ("train", "device"), 0, "train.device: expected a string"),
    ("baseline/model.json", ("train",), ["sgd"], "train: expected a mapping"),
    ("baseline/model.json", ("dataset",), 3, "dataset: expected a string or a mapping"),
    ("baseline/model.json", ("dataset", "name"), DELETE, "dataset.name: required key missing"),
    # results.json: every key the report reads
    ("results.json", ("compression",), DELETE, "lacks compression"),
    ("results.json", ("compression",), "12x", "compression: expected a number, got '12x'"),
    ("results.json", ("params", "nonzero"), "100", "params.nonzero: expected a whole number"),
    ("results.json", ("layers",), {"fc1": 1}, "layers: expected a list"),
    ("results.json", ("layers", 0, "weights"), "many", "layers.0.weights: expected a whole number"),
    ("results.json", ("baseline", "val", "accuracy"), "high", "baseline.val.accuracy: expected a number"),
    ("results.json", ("pruned", "test"), [0.2], "pruned.test: expected a mapping or a number"),
    ("results.json", ("max_drop",), "0.1", "max_drop: expected a number, got '0.1'"),
    ("results.json", ("chosen_round",), "3", "chosen_round: expected a whole number"),
    ("results.json", ("latency", "b1_after"), "fast", "latency.b1_after: expected a number"),
    ("results.json", ("acceptance", "paired"), "yes", "acceptance.paired: expected true or false"),
    ("results.json", ("polish",), 3, "polish: expected a mapping"),
    ("results.json", ("channels",), {"fc1": {"before": "300"}}, "channels.fc1.before: expected a whole number"),
    ("results.json", ("saturated",), "no", "saturated: expected true or false"),
    ("results.json", ("drop", "val"), "none", "drop.val: expected a number"),
    ("results.json", TEXT, "[]", "expected an object"),
    ("results.json", TEXT, '{"baseline": {"val": ', "not valid JSON"),
    # history.jsonl: every row
    ("history.jsonl", (0, "drop"), DELETE, "line 1: drop: required key missing"),
    ("history.jsonl", (0, "strength"), "2", "line 1: strength: expected a number, got '2'"),
    ("history.jsonl", (0, "feasible"), "true", "line 1: feasible: expected true or false"),
    ("history.jsonl", (0, "round"), 1.0, "line 1: round: expected a whole number"),
    ("history.jsonl", (0, "params_nonzero"), "19827", "line 1: params_nonzero: expected a whole number"),
    ("history.jsonl", (0, "level"), "high", "line 1: level"),
    ("history.jsonl", (0, "layers", "fc1.weight", "total"), "x", "line 1: layers.fc1.weight.total"),
    ("history.jsonl", (0,), [1, 2], "line 1: holds a JSON list, expected an object"),
    ("history.jsonl", TEXT, '{"round": 1, "strength"', "line 1: invalid JSON"),
]


def _case_id(case: tuple) -> str:
    name, keys, value, _ = case
    where = "text" if keys is TEXT else ".".join(map(str, keys))
    what = "delete" if value is DELETE else type(value).__name__
    return f"{name}:{where}:{what}"


@pytest.mark.parametrize("name, keys, value, fragment", FILE_CASES, ids=[_case_id(c) for c in FILE_CASES])
def test_a_damaged_file_is_a_one_line_error_naming_the_file_and_the_key(folder, name, keys, value, fragment):
    damage(folder / name, keys, value)
    with pytest.raises(SecateurError) as error:
        READERS[name](folder)
    assert_one_line(error.value, str(folder / name), fragment)


def test_the_undamaged_files_read_back(folder):
    for reader in READERS.values():
        reader(folder)
    assert rundir.read_model_meta(folder)["format_version"] == 1
    assert read_recipe(folder / rundir.CONFIG).prune["rounds"] == 1


def test_read_model_meta_checks_the_header_too(folder):
    damage(folder / rundir.MODEL_META, ("masks",), {"fc1.weight": True})
    with pytest.raises(SecateurError) as error:
        rundir.read_model_meta(folder)
    assert_one_line(error.value, str(folder / rundir.MODEL_META), "masks: expected a list")


def test_a_run_folder_config_used_as_a_recipe_names_the_key(folder):
    damage(folder / rundir.CONFIG, ("prune", "max_drop"), "abc")
    with pytest.raises(ConfigError) as error:
        read_recipe(folder / rundir.CONFIG)
    assert_one_line(error.value, str(folder / rundir.CONFIG), "prune.max_drop: expected a number, got 'abc'")


RECIPE_CASES = [
    ("max_drop: abc\n", "max_drop: expected a number, got 'abc'"),
    ("rounds: '3'\n", "rounds: expected a whole number, got '3'"),
    ("lr: fast\n", "lr: expected a number, got 'fast'"),
    ("epochs: 1.5\n", "epochs: expected a whole number, got 1.5"),
    ("batch_size: '64'\n", "batch_size: expected a whole number"),
    ("max_dorp: 0.2\n", "unknown option(s) max_dorp"),
    ("include_bias: 3\n", "include_bias: expected true or false, got 3"),
    ("targets: 3\n", "targets: expected a list"),
    ("factors: [1, 2]\n", "factors: expected a mapping"),
    ("model: 3\n", "model: expected a name"),
    ("max_drop: .nan\n", "max_drop: expected a finite number"),
    ("max_drop: .inf\n", "max_drop: expected a finite number"),
    ("seed: 99999999999999999999999\n", "seed: expected a whole number <="),
    ("lr: 1e39\n", "lr: expected a number <="),
    ("prune:\n  max_drop: abc\n", "prune.max_drop: expected a number, got 'abc'"),
    ("prune:\n  rounds: 1\ntrain:\n  lr: x\n", "train.lr: expected a number, got 'x'"),
    ("prune:\n  rounds: 1\ntrain:\n  learning_rate: 0.1\n", "train.learning_rate: unknown key"),
    ("prune:\n  rounds: 1\nbaseline_val: high\nnote: 1\n", "unknown key(s) note"),
    ("max_drop: [0.1,\n", "not valid YAML at line"),
    ("- max_drop\n", "a recipe is a mapping"),
]


@pytest.mark.parametrize("text, fragment", RECIPE_CASES, ids=[t.split(":")[0] + str(i) for i, (t, _) in
                                                              enumerate(RECIPE_CASES)])
def test_a_bad_recipe_is_a_one_line_error_naming_the_file_and_the_key(tmp_path, text, fragment):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        read_recipe(path)
    assert_one_line(error.value, str(path), fragment)


def test_recipe_numbers_in_exponent_form_are_numbers(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\nmax_drop: 0.2\n")
    recipe = read_recipe(path)
    assert recipe.train == {"lr": 0.001, "weight_decay": 0.0005} and recipe.prune == {"max_drop": 0.2}


# ----------------------------------------------------------------------------- the same through the CLI

RESUME = ("prune", "--out", "{run}", "--resume", "--quiet")
FROM = ("prune", "--from", "{run}/baseline", "--dataset", "digits", "--out", "{tmp}/again", "--quiet")
CLI_CASES = [
    ("results.json", ("compression",), "12x", ("report", "{run}"), "compression: expected a number"),
    ("results.json", ("layers", 0, "weights"), "many", ("report", "{run}"), "layers.0.weights"),
    ("history.jsonl", (0, "drop"), "a lot", ("report", "{run}"), "line 1: drop: expected a number"),
    ("model.json", ("tensors",), "9", ("info", "{run}"), "tensors: expected a whole number"),
    ("model.json", ("model", "args", "input_shape"), "1,8,8", ("info", "{run}"), "model.args.input_shape"),
    ("state.json", ("search", "round"), "1", RESUME, "search.round: expected a whole number"),
    ("config.yaml", ("prune", "max_drop"), "abc", RESUME, "prune.max_drop: expected a number, got 'abc'"),
    ("config.yaml", TEXT, "prune:\n  max_drop: [0.1,\n", RESUME, "is not valid YAML at line"),
    ("baseline/model.json", ("train", "lr"), "0.05", FROM, "train.lr: expected a number, got '0.05'"),
    ("baseline/model.json", ("train", "learning_rate"), 0.1, FROM, "train.learning_rate: unknown key"),
]


@pytest.mark.parametrize("name, keys, value, argv, fragment", CLI_CASES,
                         ids=[_case_id((*c[:3], None)) for c in CLI_CASES])
def test_cli_a_damaged_file_exits_2_with_one_line_and_leaves_it_unchanged(capsys, folder, tmp_path, name, keys,
                                                                          value, argv, fragment):
    if argv is RESUME:  # an interrupted run: no results yet, and its marker says unfinished
        (folder / rundir.RESULTS).unlink()
        marker = json.loads((folder / rundir.MARKER).read_text())
        (folder / rundir.MARKER).write_text(json.dumps({**marker, "finished": False}))
    damage(folder / name, keys, value)
    before = (folder / name).read_bytes()
    code, _, err = run_cli(capsys, *(arg.format(run=folder, tmp=tmp_path) for arg in argv))
    assert_one_line_error(code, err, str(folder / name), fragment)
    assert (folder / name).read_bytes() == before


# ----------------------------------------------------------------------------- numbers out of range

TRAIN = ("train", "--model", "lenet300", "--dataset", "digits", "--out", "x", "--quiet")
PRUNE = ("prune", "--model", "lenet300", "--dataset", "digits", "--out", "x", "--quiet")
SWEEP = ("sweep", "--model", "lenet300", "--dataset", "digits", "--out", "x", "--quiet")
NUMBER_FLAGS = [
    ((*TRAIN, "--seed", "99999999999999999999999"), ("--seed", "below 2**63")),
    ((*TRAIN, "--lr", "1e39"), ("--lr", "finite number > 0")),
    ((*TRAIN, "--lr", "nan"), ("--lr",)),
    ((*TRAIN, "--weight-decay", "1e39"), ("--weight-decay",)),
    ((*TRAIN, "--epochs", str(10**12)), ("--epochs", "at most 100,000 epochs")),
    ((*TRAIN, "--augment", "1000000"), ("augment", "8x8", "digits")),
    ((*TRAIN, "--batch-size", str(2**64)), ("--batch-size",)),
    ((*PRUNE, "--max-drop", "nan"), ("--max-drop",)),
    ((*PRUNE, "--max-drop", "inf"), ("--max-drop",)),
    ((*PRUNE, "--retrain-epochs", str(10**12)), ("--retrain-epochs", "at most")),
    ((*PRUNE, "--polish-epochs", str(10**12)), ("--polish-epochs", "at most")),
    ((*PRUNE, "--start", "1e39"), ("--start",)),
    ((*PRUNE, "--growth", "1e39"), ("--growth",)),
    ((*PRUNE, "--seed", str(2**64)), ("--seed",)),
    ((*SWEEP, "--strengths", "1,nan"), ("--strengths", "(0, 64]")),
    ((*SWEEP, "--strengths", "1,inf"), ("--strengths",)),
    ((*SWEEP, "--strengths", "1,1e300"), ("--strengths",)),
    ((*SWEEP, "--retrain-epochs", str(10**12)), ("--retrain-epochs",)),
    (("info", "lenet5", "--input-shape", "1,100000,100000"), ("--input-shape", "at most")),
    (("info", "lenet5", "--num-classes", str(10**12)), ("--num-classes", "at most")),
]


@pytest.mark.parametrize("argv, fragments", NUMBER_FLAGS, ids=[f"{a[0]}{a[-2]}={a[-1]}" for a, _ in NUMBER_FLAGS])
def test_cli_numbers_out_of_range_are_one_line_errors(capsys, tmp_path, monkeypatch, argv, fragments):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "x").exists()


API_NUMBERS: list[tuple[Callable[[], object], str]] = [
    (lambda: TrainConfig(seed=10**23).validate(), "seed"),
    (lambda: TrainConfig(seed=-1).validate(), "seed must be in [0, 2**63)"),
    (lambda: TrainConfig(lr=1e39).validate(), "lr: expected a number <="),
    (lambda: TrainConfig(weight_decay=INF).validate(), "weight_decay: expected a finite number"),
    (lambda: TrainConfig(epochs=10**12).validate(), "epochs must be in [0, 100000]"),
    (lambda: TrainConfig(batch_size=2.5).validate(), "batch_size: expected a whole number"),  # type: ignore[arg-type]
    (lambda: TrainConfig(lr="0.1").validate(), "lr: expected a number, got '0.1'"),  # type: ignore[arg-type]
    (lambda: TrainConfig(augment=True).validate(), "augment: expected a whole number, got true"),
    (lambda: TrainConfig.from_dict({"lr": "0.1"}), "lr: expected a number"),
    (lambda: TrainConfig.from_dict({"lr_rate": 0.1}), "lr_rate: unknown key"),
    (lambda: PruneConfig(max_drop="abc").validate(), "max_drop: expected a number, got 'abc'"),  # type: ignore[arg-type]
    (lambda: PruneConfig(rounds="3").validate(), "rounds: expected a whole number"),  # type: ignore[arg-type]
    (lambda: PruneConfig(retrain_epochs=10**12).validate(), "retrain epochs must be in [0, 100000]"),
    (lambda: PruneConfig(polish_epochs=10**12).validate(), "polish epochs must be in [0, 100000]"),
    (lambda: PruneConfig(recovery=10**9).validate(), "recovery passes must be in [0, 1000]"),
    (lambda: PruneConfig(seed=10**30).validate(), "seed: expected a whole number <="),
    (lambda: PruneConfig(seed=-1).validate(), "seed must be in [0, 2**63)"),
    (lambda: PruneConfig(start=INF).validate(), "start: expected a finite number"),
    (lambda: PruneConfig(growth=NAN).validate(), "growth: expected a finite number"),
    (lambda: PruneConfig(temperature=INF).validate(), "temperature: expected a finite number"),
    (lambda: PruneConfig(factors={"fc1.weight": NAN}).validate(), "factors.fc1.weight: expected a finite number"),
    (lambda: PruneConfig.from_dict({"max_drop": "0.1"}), "max_drop: expected a number, got '0.1'"),
]


@pytest.mark.parametrize("call, fragment", API_NUMBERS, ids=[str(i) for i in range(len(API_NUMBERS))])
def test_api_numbers_and_types_out_of_range_are_one_line_config_errors(call, fragment):
    with pytest.raises(ConfigError) as error:
        call()
    assert_one_line(error.value, fragment)


@pytest.mark.parametrize("strengths", [(1.0, NAN), (1.0, INF), (0.0, 1.0), (1.0, 1e300), ("2",), ()],
                         ids=["nan", "inf", "zero", "huge", "string", "empty"])
def test_api_sweep_refuses_strengths_out_of_range(strengths):
    model = build_model("lenet300", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError) as error:
        sweep(model, ["han"], make_train=lambda index: lambda m: None, evaluate=lambda m: 0.5, strengths=strengths)
    assert_one_line(error.value, "strengths must be numbers in (0, 64]")


def test_api_fit_refuses_a_shift_as_large_as_the_images():
    data = load_dataset("digits")
    with pytest.raises(ConfigError) as error:
        fit(_template(), data, TrainConfig(epochs=1, augment=8), progress=False)
    assert_one_line(error.value, "augment", "8x8", "below 8")
