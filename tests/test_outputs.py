"""Where commands may write: one ownership rule for every output folder, file-system errors,
strict resumes, commands crossing each other, and messages that say what a path is not.

Every refused command exits 2 with one line and leaves every file it was pointed at (all of
the folders below) byte-identical, with nothing added. The folders are made once per module
(digits, LeNet-300, one epoch, one round) and copied for every test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import secateur.search.orchestrator as orchestrator
from secateur.errors import CheckpointError, ConfigError
from secateur.io import rundir
from secateur.io.storage import load_model
from secateur.unstructured.granularities import masked_copy
from secateur.zoo.baseline import train_baseline
from secateur.zoo.data import load_dataset
from secateur.zoo.models import build_model
from test_cli import assert_one_line_error, run_cli

QUIET = ("--quiet", "--dataset", "digits")
PRUNE = ("--rounds", "1", "--retrain-epochs", "1", "--polish-epochs", "0", "--max-drop", "5")
TRAIN = ("train", "--model", "lenet300", "--epochs", "1", *QUIET)
SWEEP = ("--methods", "han", "--strengths", "1", "--retrain-epochs", "0")
LONG = "x" * 300  # a folder name longer than any file system allows


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A baseline, another baseline, a finished and an interrupted prune run, a sweep, a sensitivity."""
    root = tmp_path_factory.mktemp("made")
    capsys = _Capture()
    for name, seed in (("base", "0"), ("base2", "3")):
        assert run_cli(capsys, *TRAIN, "--seed", seed, "--out", str(root / name))[0] == 0
    assert run_cli(capsys, "prune", "--from", str(root / "base"), "--out", str(root / "run"), *PRUNE, *QUIET)[0] == 0
    assert run_cli(capsys, "sweep", "--from", str(root / "base"), "--out", str(root / "sw"), *SWEEP, *QUIET)[0] == 0
    assert run_cli(capsys, "sensitivity", "--from", str(root / "base"), "--out", str(root / "sens"), "--quiet")[0] == 0
    with pytest.MonkeyPatch.context() as patch:  # killed after its last round, before the outputs
        patch.setattr(orchestrator, "_polish", _interrupt)
        assert run_cli(capsys, "prune", "--from", str(root / "base"), "--out", str(root / "half"),
                       *PRUNE, *QUIET)[0] == 130
    return root


class _Capture:
    """A stand-in for pytest's capsys in a module fixture (output is not checked there)."""

    def readouterr(self):
        return type("Captured", (), {"out": "", "err": ""})()


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.fixture
def world(made, tmp_path) -> dict[str, Path]:
    """Copies of the made folders, plus a foreign folder, an empty one, a file and runs from before markers."""
    root = tmp_path / "w"
    shutil.copytree(made, root)
    (root / "afile").write_text("mine\n")
    (root / "foreign").mkdir()
    (root / "foreign" / rundir.MODEL_META).write_text("{}\n")
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("mine\n")
    (root / "empty").mkdir()
    shutil.copytree(root / "base", root / "prebase" / rundir.BASELINE)  # a baseline put where a run keeps it
    for name in ("half", "run", "base"):  # the same outputs, as secateur wrote them before markers
        shutil.copytree(root / name, root / f"old{name}")
        (root / f"old{name}" / rundir.MARKER).unlink()
    (root / "oldhalf" / rundir.BASELINE / rundir.MARKER).unlink(missing_ok=True)
    paths = {path.name: path for path in root.iterdir()}
    return {**paths, "root": root, "nothing": root / "nothing", "long": root / LONG}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its sha256."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def case_id(argv: tuple[str, ...]) -> str:
    """A readable test id: the command, --force / --resume, and the folders it names."""
    kept = [part for part in argv[1:] if part.startswith("{") or part in ("--force", "--resume")]
    return " ".join([argv[0], *kept]).replace("{", "").replace("}", "")


def refused(capsys, world, argv, *fragments: str, absent: tuple[str, ...] = ()) -> str:
    """Run a command that must be refused: exit 2, one line, nothing changed; returns the line."""
    before = snapshot(world["root"])
    code, _, err = run_cli(capsys, *[part.format(**world) for part in argv])
    assert_one_line_error(code, err, *fragments)
    for fragment in absent:
        assert fragment not in err
    assert snapshot(world["root"]) == before
    assert not world["nothing"].exists()
    return err


# ----------------------------------------------------------------------------- 1. ownership

OWNERSHIP = [
    # train
    ((*TRAIN, "--out", "{foreign}"), ["secateur did not write", "model.json"]),
    ((*TRAIN, "--out", "{notes}"), ["secateur did not write", "notes.txt"]),
    ((*TRAIN, "--out", "{base}"), ["already exists", "--force"]),
    ((*TRAIN, "--out", "{run}"), ["secateur prune"]),
    ((*TRAIN, "--out", "{half}"), ["secateur prune"]),
    ((*TRAIN, "--out", "{sw}"), ["secateur sweep"]),
    ((*TRAIN, "--out", "{sens}"), ["secateur sensitivity"]),
    ((*TRAIN, "--out", "{oldrun}"), ["secateur prune"]),
    ((*TRAIN, "--out", "{oldbase}"), ["already exists", "--force"]),
    ((*TRAIN, "--out", "{run}/state"), ["secateur did not write", "round-1"]),
    ((*TRAIN, "--force", "--out", "{foreign}"), ["secateur did not write", "--force replaces only"]),
    ((*TRAIN, "--force", "--out", "{run}"), ["secateur prune"]),
    ((*TRAIN, "--force", "--out", "{sw}"), ["secateur sweep"]),
    # prune
    (("prune", "--from", "{base}", "--out", "{base}", *PRUNE, *QUIET), ["is the --from folder"]),
    (("prune", "--from", "{base}/model.safetensors", "--out", "{base}", *PRUNE, *QUIET), ["is the --from folder"]),
    (("prune", "--from", "{run}", "--out", "{run}", *PRUNE, *QUIET), ["is the --from folder"]),
    (("prune", "--from", "{run}/baseline", "--out", "{run}", *PRUNE, *QUIET), ["lies inside --out"]),
    (("prune", "--force", "--from", "{run}/baseline", "--out", "{run}", *PRUNE, *QUIET), ["lies inside --out"]),
    (("prune", "--from", "{base}", "--out", "{base2}", *PRUNE, *QUIET), ["secateur train"]),
    (("prune", "--force", "--from", "{base}", "--out", "{base2}", *PRUNE, *QUIET), ["secateur train"]),
    (("prune", "--model", "lenet300", "--out", "{base}", *PRUNE, *QUIET), ["secateur train"]),
    (("prune", "--from", "{base}", "--out", "{oldbase}", *PRUNE, *QUIET), ["secateur train"]),
    (("prune", "--from", "{base}", "--out", "{sw}", *PRUNE, *QUIET), ["secateur sweep"]),
    (("prune", "--from", "{base}", "--out", "{sens}", *PRUNE, *QUIET), ["secateur sensitivity"]),
    (("prune", "--from", "{base}", "--out", "{foreign}", *PRUNE, *QUIET), ["secateur did not write"]),
    (("prune", "--from", "{base}", "--out", "{prebase}", *PRUNE, *QUIET), ["no prune output", "--from"]),
    (("prune", "--model", "lenet300", "--out", "{prebase}", *PRUNE, *QUIET), ["no prune output", "--from"]),
    (("prune", "--resume", "--out", "{prebase}", "--quiet"), ["holds no prune run to resume"]),
    (("prune", "--force", "--from", "{base}", "--out", "{notes}", *PRUNE, *QUIET), ["secateur did not write"]),
    (("prune", "--from", "{base}", "--out", "{run}", *PRUNE, *QUIET), ["finished", "--force"]),
    (("prune", "--from", "{base}", "--out", "{oldrun}", *PRUNE, *QUIET), ["finished", "--force"]),
    (("prune", "--from", "{base}", "--out", "{half}", *PRUNE, *QUIET), ["unfinished", "--resume"]),
    (("prune", "--from", "{base}", "--out", "{oldhalf}", *PRUNE, *QUIET), ["unfinished", "--resume"]),
    (("prune", "--resume", "--force", "--out", "{half}", "--quiet"), ["--resume and --force"]),
    # sweep
    (("sweep", "--from", "{base}", "--out", "{sw}", *SWEEP, *QUIET), ["already exists", "--force"]),
    (("sweep", "--from", "{base}", "--out", "{run}", *SWEEP, *QUIET), ["secateur prune"]),
    (("sweep", "--from", "{base}", "--out", "{base}", *SWEEP, *QUIET), ["is the --from folder"]),
    (("sweep", "--from", "{base}", "--out", "{base2}", *SWEEP, *QUIET), ["secateur train"]),
    (("sweep", "--from", "{base}", "--out", "{sens}", *SWEEP, *QUIET), ["secateur sensitivity"]),
    (("sweep", "--from", "{base}", "--out", "{foreign}", *SWEEP, *QUIET), ["secateur did not write"]),
    (("sweep", "--force", "--from", "{base}", "--out", "{run}", *SWEEP, *QUIET), ["secateur prune"]),
    # sensitivity
    (("sensitivity", "--from", "{base}", "--out", "{sens}", "--quiet"), ["already exists", "--force"]),
    (("sensitivity", "--from", "{base}", "--out", "{sw}", "--quiet"), ["secateur sweep"]),
    (("sensitivity", "--from", "{base}", "--out", "{base}", "--quiet"), ["is the --from folder"]),
    (("sensitivity", "--from", "{base}", "--out", "{base2}", "--quiet"), ["secateur train"]),
    (("sensitivity", "--from", "{base}", "--out", "{run}", "--quiet"), ["secateur prune"]),
    (("sensitivity", "--from", "{base}", "--out", "{foreign}", "--quiet"), ["secateur did not write"]),
    (("sensitivity", "--from", "{base}", "--out", "{notes}", "--quiet"), ["secateur did not write"]),
    (("sensitivity", "--force", "--from", "{base}", "--out", "{half}", "--quiet"), ["secateur prune"]),
    # report writes only into a finished prune run folder
    (("report", "{sw}"), ["secateur sweep", "not a prune run"]),
    (("report", "{sens}"), ["secateur sensitivity"]),
    (("report", "{base}"), ["secateur train"]),
    (("report", "{foreign}"), ["not a run folder secateur made"]),
    (("report", "{notes}"), ["not a run folder secateur made"]),
    (("report", "{empty}"), ["not a run folder secateur made"]),
    (("report", "{half}"), ["has not finished", "--resume"]),
    (("report", "{oldhalf}"), ["has not finished", "--resume"]),
    (("report", "{afile}"), ["is a file"]),
]


@pytest.mark.parametrize("argv, fragments", OWNERSHIP, ids=[case_id(argv) for argv, _ in OWNERSHIP])
def test_a_command_writes_only_into_its_own_folder(capsys, world, argv, fragments):
    refused(capsys, world, argv, *fragments)


# ----------------------------------------------------------------------------- 2. file-system errors

OUTS = {
    "train": TRAIN,
    "prune": ("prune", "--from", "{base}", *PRUNE, *QUIET),
    "sweep": ("sweep", "--from", "{base}", *SWEEP, *QUIET),
    "sensitivity": ("sensitivity", "--from", "{base}", "--quiet"),
}
BAD_OUTS = [
    ("{afile}", ["is a file"]),
    ("{afile}/sub", ["lies under the file", "afile"]),
    ("{afile}/sub/deeper", ["lies under the file", "afile"]),
    ("/proc/secateur-test/out", ["cannot create", "/proc/secateur-test/out"]),
    ("{long}", ["too long"]),
]


@pytest.mark.parametrize("out, fragments", BAD_OUTS, ids=["file", "under-file", "under-file-deep", "proc", "long"])
@pytest.mark.parametrize("command", list(OUTS))
def test_an_out_that_cannot_be_a_folder_is_one_line(capsys, world, command, out, fragments):
    refused(capsys, world, (*OUTS[command], "--out", out), *fragments)


@pytest.mark.parametrize("command", list(OUTS))
def test_a_read_only_parent_is_one_line(capsys, world, command):
    parent = world["empty"]
    os.chmod(parent, 0o555)
    try:
        probe = parent / "probe"
        try:
            probe.mkdir()
        except OSError:
            pass
        else:
            probe.rmdir()
            pytest.skip("running as root: a read-only folder is still writable")
        refused(capsys, world, (*OUTS[command], "--out", "{empty}/out"), "read-only")
    finally:
        os.chmod(parent, 0o755)


# ----------------------------------------------------------------------------- 3. strict resume

RESUME = ("prune", "--resume", "--quiet")
MISMATCHES = [
    (("--out", "{half}", "--max-drop", "3"), ["--max-drop 3.0", "5.0", "config.yaml"]),
    (("--out", "{half}", "--method", "random"), ["--method random", "han"]),
    (("--out", "{half}", "--granularity", "neuron"), ["--granularity neuron", "weight"]),
    (("--out", "{half}", "--rounds", "7"), ["--rounds 7", "1"]),
    (("--out", "{half}", "--retrain-epochs", "4"), ["--retrain-epochs 4", "1"]),
    (("--out", "{half}", "--polish-epochs", "3"), ["--polish-epochs 3", "0"]),
    (("--out", "{half}", "--confidence", "2"), ["--confidence 2.0", "0.5"]),
    (("--out", "{half}", "--schedule", "oneshot"), ["--schedule oneshot", "iterative"]),
    (("--out", "{half}", "--targets", "fc1.weight"), ["--targets fc1.weight"]),
    (("--out", "{half}", "--from", "{base2}"), ["--from", "not the baseline", "sha256"]),
    (("--out", "{half}", "--from", "{run}"), ["--from", "not the baseline"]),
    (("--out", "{half}", "--model", "lenet5"), ["--model lenet5", "lenet300"]),
    (("--out", "{half}", "--dataset", "mnist"), ["--dataset mnist", "digits"]),
    (("--out", "{half}", "--epochs", "7"), ["--epochs 7", "1"]),
    (("--out", "{half}", "--lr", "0.3"), ["--lr 0.3", "0.05"]),
    (("--out", "{half}", "--config", "{root}/recipe.yaml"), ["--max-drop 1.0", "5.0"]),
    (("--out", "{oldhalf}", "--max-drop", "3"), ["--max-drop 3.0", "5.0"]),
    (("--out", "{oldhalf}", "--from", "{base2}"), ["--from", "not the baseline"]),
    (("--out", "{run}", "--max-drop", "2"), ["--max-drop 2.0", "5.0"]),
    (("--out", "{run}", "--from", "{base2}"), ["--from", "not the baseline"]),
]


@pytest.mark.parametrize("argv, fragments", MISMATCHES, ids=[" ".join(argv[1:]) for argv, _ in MISMATCHES])
def test_a_resume_given_other_settings_is_refused(capsys, world, argv, fragments):
    (world["root"] / "recipe.yaml").write_text("max_drop: 1.0\n")
    refused(capsys, world, (*RESUME, *argv), *fragments)


NO_RUN = [
    ("{empty}", ["holds no prune run to resume"]),
    ("{nothing}", ["does not exist", "no run to resume"]),
    ("{foreign}", ["holds no prune run to resume"]),
    ("{base}", ["secateur train"]),
    ("{sw}", ["secateur sweep"]),
    ("{sens}", ["secateur sensitivity"]),
]


@pytest.mark.parametrize("out, fragments", NO_RUN)
def test_resume_where_there_is_no_run_says_so_without_asking_for_a_model(capsys, world, out, fragments):
    refused(capsys, world, (*RESUME, "--out", out), *fragments, absent=("--model",))


@pytest.mark.parametrize("name, flags", [
    ("half", ("--from", "{base}", "--max-drop", "5", "--method", "han", "--dataset", "digits", "--epochs", "1")),
    ("half", ()),
    ("oldhalf", ("--from", "{base}", "--max-drop", "5.0", "--granularity", "weight", "--model", "lenet300")),
])
def test_an_interrupted_run_resumes_with_the_same_settings(capsys, world, name, flags):
    out = world[name]
    code, stdout, err = run_cli(capsys, *RESUME, "--out", str(out), *[flag.format(**world) for flag in flags])
    assert code == 0, err
    assert "smaller" in stdout
    marker = json.loads((out / rundir.MARKER).read_text())
    assert marker["kind"] == "prune" and marker["finished"] is True


@pytest.mark.parametrize("key, old, new", [("method", "han", "magnitude"), ("max_drop", "5.0", "0.5"),
                                           ("confidence", "0.5", "0.0")])
def test_a_config_yaml_edited_half_way_through_a_run_is_refused_on_resume(capsys, world, key, old, new):
    config = world["half"] / rundir.CONFIG
    text = config.read_text()
    assert f"{key}: {old}\n" in text
    config.write_text(text.replace(f"{key}: {old}\n", f"{key}: {new}\n"))
    refused(capsys, world, (*RESUME, "--out", "{half}"), f"prune.{key} is", "the run's rounds ran with")


@pytest.mark.parametrize("name", ["run", "oldrun"])
def test_a_finished_run_resumed_is_a_one_line_note_and_changes_nothing(capsys, world, name):
    before = snapshot(world["root"])
    code, stdout, err = run_cli(capsys, *RESUME, "--out", str(world[name]), "--max-drop", "5")
    assert code == 0
    assert [line for line in err.splitlines() if line.strip()] == [
        f"secateur: the run in {world[name]} has already finished; nothing to resume"]
    assert "smaller" in stdout
    assert snapshot(world["root"]) == before


# ----------------------------------------------------------------------------- --force replaces only its own files


@pytest.mark.parametrize("name, argv", [
    ("base", TRAIN),
    ("oldbase", TRAIN),
    ("run", ("prune", "--from", "{base}", *PRUNE, *QUIET)),
    ("oldrun", ("prune", "--from", "{base}", *PRUNE, *QUIET)),
    ("half", ("prune", "--from", "{base}", *PRUNE, *QUIET)),
    ("sw", ("sweep", "--from", "{base}", *SWEEP, *QUIET)),
    ("sens", ("sensitivity", "--from", "{base}", "--quiet")),
])
def test_force_replaces_only_the_files_its_output_wrote(capsys, world, name, argv):
    out = world[name]
    (out / "notes.txt").write_text("mine\n")
    (out / rundir.STATE_DIR).mkdir(exist_ok=True)
    (out / rundir.STATE_DIR / "mine.txt").write_text("mine too\n")
    code, _, err = run_cli(capsys, *[part.format(**world) for part in argv], "--force", "--out", str(out))
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine\n"
    assert (out / rundir.STATE_DIR / "mine.txt").read_text() == "mine too\n"
    marker = json.loads((out / rundir.MARKER).read_text())
    assert marker["finished"] is True and marker["files"] == list(rundir.OUTPUTS[marker["kind"]])
    rounds = sorted(path.name for path in (out / rundir.STATE_DIR).glob("round-*"))
    assert rounds in ([], ["round-1.json", "round-1.safetensors"])


def test_force_on_a_new_folder_is_a_plain_start(capsys, world):
    code, _, err = run_cli(capsys, *TRAIN, "--force", "--out", str(world["root"] / "new" / "deep"))
    assert code == 0, err
    found = rundir.find_output(world["root"] / "new" / "deep")
    assert found is not None and found.kind == "train" and found.finished


# ----------------------------------------------------------------------------- 4. commands crossing each other


@pytest.mark.parametrize("source", ["run", "oldrun", "half/baseline", "run/model.safetensors"])
def test_sensitivity_from_a_prune_run_works(capsys, world, source):
    out = world["root"] / "sens-of-run"
    code, stdout, err = run_cli(capsys, "sensitivity", "--from", str(world["root"] / source), "--out", str(out),
                                "--quiet")
    assert code == 0, err
    assert "fc1.weight" in stdout and (out / rundir.SENSITIVITY).is_file()


@pytest.mark.parametrize("source, fragments", [
    ("{sw}", ["no checkpoint in", "secateur sweep"]),
    ("{sens}", ["no checkpoint in", "secateur sensitivity"]),
    ("{empty}", ["no checkpoint in"]),
    ("{afile}", ["is not a checkpoint"]),
])
def test_from_a_folder_without_a_model_says_what_it_holds(capsys, world, source, fragments):
    refused(capsys, world, ("sensitivity", "--from", source, "--out", "{root}/x", "--quiet"), *fragments)
    assert not (world["root"] / "x").exists()


# ----------------------------------------------------------------------------- 5. messages that mislead


@pytest.mark.parametrize("target, fragments", [
    ("{empty}", ["no checkpoint in", "empty"]),
    ("{notes}", ["no checkpoint in", "notes"]),
    ("{sw}", ["no checkpoint in", "secateur sweep"]),
    ("{afile}", ["is not a checkpoint", "afile"]),
    ("{root}/nowhere/run", ["does not exist"]),
])
def test_info_on_a_path_without_a_checkpoint_says_what_it_is_not(capsys, world, target, fragments):
    refused(capsys, world, ("info", target), *fragments, absent=("unknown model",))


@pytest.mark.parametrize("version", ["1", 1.0, "one", True, None])
def test_a_format_version_that_is_not_a_whole_number_says_so(capsys, world, version):
    header = world["base"] / rundir.MODEL_META
    meta = json.loads(header.read_text())
    meta["format_version"] = version
    header.write_text(json.dumps(meta))
    refused(capsys, world, ("info", "{base}"), "format_version: expected a whole number")


@pytest.mark.parametrize("name, dtype", [("t10k-images-idx3-ubyte.gz", ">f4"), ("t10k-labels-idx1-ubyte.gz", ">f4"),
                                         ("t10k-images-idx3-ubyte.gz", ">i2")])
def test_an_idx_file_of_an_unsupported_type_names_the_file(capsys, tmp_path, data_root, name, dtype):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for source in (data_root / "mnist").iterdir():
        (folder / source.name).symlink_to(source)
    (folder / name).unlink()
    dims = (10_000, 28, 28) if "images" in name else (10_000,)
    code = {">f4": 0x0D, ">i2": 0x0B}[dtype]
    header = bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    (folder / name).write_bytes(gzip.compress(header + np.zeros(dims, dtype=dtype).tobytes(), compresslevel=1))
    code_, _, err = run_cli(capsys, "train", "--model", "lenet300", "--data-dir", str(folder), "--epochs", "0",
                            "--out", str(tmp_path / "run"), "--quiet")
    assert_one_line_error(code_, err, name, np.dtype(dtype).name)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the same rule in the Python API


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_the_api_follows_the_same_rule(world, digits):
    model = build_model("lenet300", input_shape=digits.input_shape)
    with pytest.raises(ConfigError, match="secateur did not write"):
        orchestrator.prune(model, data=digits, out=world["notes"], rounds=1)
    with pytest.raises(ConfigError, match="secateur prune, not of secateur train"):
        train_baseline("lenet300", digits, out=world["run"])
    with pytest.raises(ConfigError, match="already exists"):
        train_baseline("lenet300", digits, out=world["base"])
    baseline, _ = load_model(rundir.model_base(rundir.baseline_dir(world["half"])))
    with pytest.raises(ConfigError, match="max_drop=3"):
        orchestrator.prune(baseline, data=digits, out=world["half"], resume=True, max_drop=3)
    with pytest.raises(ConfigError, match="not the baseline"):
        orchestrator.prune(model, data=digits, out=world["half"], resume=True)
    with pytest.raises(ConfigError, match="has finished"):
        orchestrator.prune(model, data=digits, out=world["run"], resume=True)


def test_a_command_that_fails_before_writing_leaves_no_folder(world, digits):
    model = build_model("lenet300", input_shape=digits.input_shape)
    out = world["root"] / "new" / "run"
    with pytest.raises(ConfigError, match="method"):
        orchestrator.prune(model, data=digits, out=out, method="no-such-method")
    assert not (world["root"] / "new").exists()
    with pytest.raises(ConfigError, match="method"):
        orchestrator.prune(model, data=digits, out=world["empty"], method="no-such-method")
    assert list(world["empty"].iterdir()) == []


def test_a_damaged_marker_is_one_line_and_removal_stays_inside_the_folder(world):
    outside = world["root"] / "afile"
    out = world["sens"]
    marker = json.loads((out / rundir.MARKER).read_text())
    rundir.remove_output(out, rundir.Output("sensitivity", True, ("../afile", "/etc/hostname", "**/*")))
    assert outside.exists() and (out / rundir.SENSITIVITY).exists()
    (out / rundir.MARKER).write_text(json.dumps({**marker, "files": ["../afile"]}))
    with pytest.raises(CheckpointError, match="is damaged"):
        rundir.find_output(out)


def test_the_baseline_digest_ignores_masks_and_saving(world):
    model, _ = load_model(rundir.model_base(world["base"]))
    digest = rundir.weights_sha256(model)
    assert digest == rundir.weights_sha256(masked_copy(model, ("fc1.weight",)))
    assert digest == json.loads((world["run"] / rundir.MARKER).read_text())["baseline_sha256"]
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1
    assert rundir.weights_sha256(model) != digest
