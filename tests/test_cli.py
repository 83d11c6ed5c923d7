"""The command line: one-line errors with exit code 2, and small end-to-end runs."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from secateur.app.cli import main
from secateur.io import rundir


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse exits for usage mistakes
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("argv, fragments", [
    (["train", "--model", "lenet9", "--out", "x", "--dataset", "digits"], ["unknown model", "lenet5"]),
    (["train", "--model", "lenet5", "--out", "x", "--epochs", "-1"], ["--epochs", ">= 0"]),
    (["train", "--model", "lenet5", "--out", "x", "--lr", "0"], ["--lr", "> 0"]),
    (["train", "--model", "lenet5", "--out", "x", "--dataset", "imagenet"], ["unknown dataset", "mnist"]),
    (["prune", "--from", "does/not/exist", "--out", "x"], ["does not exist"]),
    (["prune", "--model", "lenet5", "--out", "x", "--method", "l0"], ["'l0'", "choose one of", "han"]),
    (["prune", "--model", "lenet5", "--out", "x", "--max-drop", "-0.5"], ["--max-drop"]),
    (["prune", "--model", "lenet5", "--out", "x", "--granularity", "channel", "--method", "han"],
     ["does not apply to granularity 'channel'", "l1"]),
    (["prune", "--model", "lenet5", "--out", "x", "--granularity", "neuron", "--round-to", "0"], ["--round-to"]),
    (["info", "resnet1000"], ["unknown model"]),
    (["report", "nowhere"], ["does not exist"]),
])
def test_expected_mistakes_are_one_line_with_exit_code_2(capsys, tmp_path, monkeypatch, argv, fragments):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_info_prints_the_layer_table_and_totals(capsys):
    code, out, _ = run_cli(capsys, "info", "lenet5")
    assert code == 0
    assert "conv2" in out and "431,080" in out and "2,293,000" in out


def test_corrupt_mnist_file_is_a_one_line_error(capsys, tmp_path, data_root):
    folder = tmp_path / "mnist"
    shutil.copytree(data_root / "mnist", folder)
    blob = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 3])
    code, _, err = run_cli(capsys, "train", "--model", "lenet300", "--data-dir", str(folder),
                           "--out", str(tmp_path / "run"), "--quiet")
    assert_one_line_error(code, err, "train-images-idx3-ubyte.gz")
    assert not (tmp_path / "run").exists()


def test_wrong_magic_number_is_a_one_line_error(capsys, tmp_path, data_root):
    folder = tmp_path / "mnist"
    shutil.copytree(data_root / "mnist", folder)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2:4] = b"\x0d\x07"
    path.write_bytes(gzip.compress(bytes(raw)))
    code, _, err = run_cli(capsys, "train", "--model", "lenet300", "--data-dir", str(folder),
                           "--out", str(tmp_path / "run"), "--quiet")
    assert_one_line_error(code, err, "t10k-labels-idx1-ubyte.gz", "magic")


def test_train_then_prune_then_report_on_digits(capsys, tmp_path):
    out = tmp_path / "base"
    code, stdout, _ = run_cli(capsys, "train", "--model", "lenet300", "--dataset", "digits",
                              "--out", str(out), "--epochs", "3", "--quiet")
    assert code == 0 and "test accuracy" in stdout
    meta = json.loads((out / rundir.MODEL_META).read_text())
    assert meta["model"]["name"] == "lenet300" and meta["dataset"]["name"] == "digits"
    for key in ("seed", "train_seconds", "versions"):
        assert key in meta
    assert 0 <= meta["metrics"]["val"]["accuracy"] <= 1 and 0 <= meta["metrics"]["test"]["accuracy"] <= 1
    # an existing checkpoint is never overwritten without --force
    code, _, err = run_cli(capsys, "train", "--model", "lenet300", "--dataset", "digits", "--out", str(out))
    assert_one_line_error(code, err, "already exists")

    run = tmp_path / "pruned"
    code, stdout, _ = run_cli(capsys, "prune", "--from", str(out), "--dataset", "digits", "--out", str(run),
                              "--method", "magnitude", "--max-drop", "5", "--rounds", "2",
                              "--retrain-epochs", "1", "--confidence", "2", "--polish-epochs", "1",
                              "--distill", "0.3", "--temperature", "2", "--quiet")
    assert code == 0 and "smaller" in stdout
    results = json.loads((run / rundir.RESULTS).read_text())
    assert results["drop"]["val"] <= 5.0
    assert results["acceptance"]["confidence"] == 2.0 and results["acceptance"]["paired"]
    assert "confidence: 2.0" in (run / rundir.CONFIG).read_text()
    assert "polish_epochs: 1" in (run / rundir.CONFIG).read_text()
    assert "distill: 0.3" in (run / rundir.CONFIG).read_text()
    assert "temperature: 2.0" in (run / rundir.CONFIG).read_text()
    rundir.report_paths(run)["md"].unlink()
    code, _, _ = run_cli(capsys, "report", str(run))
    assert code == 0 and rundir.report_paths(run)["md"].exists()
    code, stdout, _ = run_cli(capsys, "info", str(run))
    assert code == 0 and "fc1" in stdout
    code, _, err = run_cli(capsys, "prune", "--from", str(out), "--dataset", "digits", "--out", str(run))
    assert_one_line_error(code, err, "finished", "--force")  # a finished run is not resumed, only replaced

    channels = tmp_path / "neurons"
    code, stdout, err = run_cli(capsys, "prune", "--from", str(out), "--out", str(channels), "--granularity",
                                "neuron", "--max-drop", "5", "--rounds", "2", "--retrain-epochs", "1", "--quiet")
    assert code == 0, err
    assert "fewer MACs" in stdout
    results = json.loads((channels / rundir.RESULTS).read_text())
    assert results["granularity"] == "neuron" and results["channels"]["fc1"]["after"] < 300
    code, stdout, _ = run_cli(capsys, "info", str(channels))  # rebuilt from factory + plan
    assert code == 0 and f"{results['params']['total']:,}" in stdout


def test_sweep_and_sensitivity_commands_on_digits(capsys, tmp_path):
    base = tmp_path / "base"
    assert run_cli(capsys, "train", "--model", "lenet300", "--dataset", "digits", "--out", str(base),
                   "--epochs", "3", "--quiet")[0] == 0
    code, _, _ = run_cli(capsys, "sweep", "--from", str(base), "--dataset", "digits", "--out", str(tmp_path / "sw"),
                         "--methods", "han,random", "--strengths", "1,3", "--retrain-epochs", "1", "--quiet")
    assert code == 0
    sweep = json.loads((tmp_path / "sw" / rundir.SWEEP).read_text())
    assert set(sweep["methods"]) == {"han", "random"}
    for points in sweep["methods"].values():
        assert [p["strength"] for p in points] == [1.0, 3.0]
        assert points[1]["compression"] > points[0]["compression"] > 1.0
    assert (tmp_path / "sw" / rundir.SWEEP_PNG).exists()
    code, stdout, _ = run_cli(capsys, "sensitivity", "--from", str(base), "--out", str(tmp_path / "sens"), "--quiet")
    assert code == 0 and "fc1.weight" in stdout
    assert (tmp_path / "sens" / rundir.SENSITIVITY).exists() and (tmp_path / "sens" / rundir.SENSITIVITY_PNG).exists()


def test_resume_needs_only_the_run_folder(capsys, tmp_path):
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "prune", "--model", "lenet300", "--dataset", "digits", "--out", str(run),
                         "--epochs", "2", "--rounds", "2", "--retrain-epochs", "1", "--max-drop", "5", "--quiet")
    assert code == 0
    recipe = json.loads((rundir.baseline_dir(run) / rundir.MODEL_META).read_text())
    assert recipe["train"]["epochs"] == 2  # the trained baseline's own record is kept
    code, stdout, err = run_cli(capsys, "prune", "--out", str(run), "--resume", "--quiet")
    assert code == 0, err
    assert "smaller" in stdout


def test_make_demo_runs_offline_and_writes_both_reports(tmp_path):
    from secateur.app.demo import main as demo

    weights, neurons = demo(tmp_path / "demo")
    assert weights.compression > 2 and weights.results["drop"]["val"] <= 2.0 + 1e-9
    assert neurons.results["granularity"] == "neuron" and neurons.results["params"]["total"] < 50_610
    assert neurons.results["drop"]["val"] <= 2.0 + 1e-9
    assert rundir.report_paths(tmp_path / "demo")["html"].exists()
    assert rundir.report_paths(tmp_path / "demo-neurons")["html"].exists()
