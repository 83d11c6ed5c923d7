"""Several processes: torchrun ranks on one search (gloo, CPU), and ``secateur sweep --workers``.

The torchrun tests launch ``python -m torch.distributed.run --nproc-per-node 2`` with one torch
thread per rank: the API on an MNIST subset (tests/distributed_worker.py: identical models and
masks on both ranks, a run within its bound, an interrupted run resumed to the same model, and
no write by rank 1), then the command line on the offline digits (neurons removed: structured plans).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import secateur
from secateur import distributed
from secateur.app.cli import main
from secateur.app.pipeline import sweep_run
from secateur.io import rundir
from secateur.train import TrainConfig, fit
from secateur.zoo.baseline import train_baseline
from secateur.zoo.data import load_dataset
from secateur.zoo.models import build_model

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def torchrun(args: list[str], data_root: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 ARGS`` with one thread per rank and this checkout's sources."""
    env = {**os.environ, "SECATEUR_DATA": str(data_root), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def launch(data_root, tmp_path_factory):
    """One torchrun launch of tests/distributed_worker.py: its folder and each rank's report."""
    root = tmp_path_factory.mktemp("torchrun")
    done = torchrun([str(HERE / "distributed_worker.py"), str(root)], data_root, root)
    assert done.returncode == 0, done.stderr[-3000:]
    zero, one = (json.loads((root / f"rank-{r}.json").read_text()) for r in (0, 1))
    return root, zero, one


def test_two_ranks_prune_identically_resume_and_only_rank_0_writes(launch):
    tmp_path, zero, one = launch
    assert zero["world"] == one["world"] == 2
    assert zero["baseline"] == one["baseline"]  # data-parallel fit: the same weights on both ranks
    for run in ("whole", "resumed"):
        assert zero[run]["state"] == one[run]["state"] and zero[run]["mask_sha"] == one[run]["mask_sha"]
        assert zero[run]["results"] == one[run]["results"]  # rank 0's, agreed
    results = zero["whole"]["results"]
    assert results["processes"] == 2 and results["compression"] > 2 and results["rounds"] == 2
    assert results["drop"]["val"] <= 2.0  # the worker's max_drop
    assert json.loads((tmp_path / "runs" / "whole" / rundir.RESULTS).read_text()) == results
    assert zero["killed"] and one["killed"]
    assert zero["resumed"]["state"] == zero["whole"]["state"]  # the resumed run ends where the whole run did
    assert zero["writes"] and not one["writes"], one["writes"][:5]  # the hook sees rank 0's writes, none of 1's
    assert zero["own_groups"] == one["own_groups"] == [2, 2]  # prune made its own group twice, and the ranks exited


def test_torchrun_command_line_prunes_once_and_resumes(launch):
    root, zero, one = launch
    (prune, resume), (prune_1, resume_1) = zero["cli"], one["cli"]
    assert prune["code"] == prune_1["code"] == resume["code"] == resume_1["code"] == 0, prune["stderr"]
    assert "smaller" in prune["stdout"] and not prune_1["stdout"]  # rank 0 alone prints
    run = root / "runs" / "cli"
    results = json.loads((run / rundir.RESULTS).read_text())
    assert results["processes"] == 2 and results["drop"]["val"] <= 5
    assert results["granularity"] == "neuron" and results["channels"]["fc1"]["after"] < 300  # one plan, both ranks
    meta = json.loads((rundir.baseline_dir(run) / rundir.MODEL_META).read_text())
    assert meta["train"]["epochs"] == 1  # the baseline was trained (data-parallel) and saved once
    assert "already finished" in resume["stderr"] and not resume_1["stderr"]


def test_commands_that_run_in_one_process_refuse_a_torchrun_launch(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code = main(["sweep", "--model", "lenet300", "--dataset", "digits", "--out", str(tmp_path / "sw")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("secateur[rank 1]: error:") and "--workers" in err
    assert not (tmp_path / "sw").exists()


def test_shards_cover_the_split_equally_and_change_with_the_epoch():
    for n, world in ((10, 2), (11, 2), (7, 3), (1, 2)):
        shards = [distributed.shard_indices(n, 5, 1, r, world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # every rank takes as many steps
        assert set(torch.cat(shards).tolist()) == set(range(n))
        assert torch.equal(shards[0], distributed.shard_indices(n, 5, 1, 0, world))  # seeded
    assert not torch.equal(distributed.shard_indices(100, 5, 1, 0, 2), distributed.shard_indices(100, 5, 2, 0, 2))
    assert distributed.mix_seed(1, 2) != distributed.mix_seed(2, 1)


def test_alone_every_hook_is_the_identity_and_fit_is_unchanged():
    assert not distributed.active() and distributed.is_writer() and distributed.world_size() == 1
    assert distributed.agree({"a": (1, 2)}) == {"a": (1, 2)}
    with distributed.session(True) as on:  # no torchrun environment: a world of one
        assert on is False
        data = load_dataset("digits").subset(train=300, val=100, test=100)
        models = []
        for flag in (True, None):
            torch.manual_seed(0)
            model = build_model("lenet300", input_shape=(1, 8, 8))
            fit(model, data, TrainConfig(epochs=1), progress=False, distributed=flag)
            models.append(model)
    assert distributed.state_sha256(models[0]) == distributed.state_sha256(models[1])
    evaluate = distributed.writer_outcome(lambda m: 0.5)
    assert evaluate(models[0]) == 0.5


def test_sweep_workers_give_the_points_of_the_sequential_sweep(tmp_path):
    base = tmp_path / "base"
    train_baseline("lenet300", "digits", out=base, config=TrainConfig(epochs=2, lr=0.05))
    options = {"from_dir": base, "methods": ["han", "random"], "strengths": (1.0, 3.0), "retrain_epochs": 1,
               "progress": False}
    sweep_run(out=tmp_path / "one", **options)
    sweep_run(out=tmp_path / "two", workers=2, **options)
    one, two = (json.loads((tmp_path / name / rundir.SWEEP).read_text()) for name in ("one", "two"))
    assert one["methods"] == two["methods"] and one == two
    assert [p["strength"] for p in two["methods"]["random"]] == [1.0, 3.0]


def test_a_distributed_option_of_the_wrong_kind_is_one_line(monkeypatch):
    data = load_dataset("digits").subset(train=50, val=20, test=20)
    model = build_model("lenet300", input_shape=(1, 8, 8))
    with pytest.raises(distributed.ConfigError, match="distributed= must be True or False"):
        fit(model, data, TrainConfig(epochs=1), progress=False, distributed="yes")  # type: ignore[arg-type]
    with pytest.raises(distributed.ConfigError, match="distributed= must be True or False"):
        secateur.prune(model, data=data, distributed=1)  # type: ignore[arg-type]
    monkeypatch.setenv("WORLD_SIZE", "2")  # launched by torchrun, but no process group joined
    with pytest.raises(distributed.ConfigError, match="needs the process group"):
        fit(model, data, TrainConfig(epochs=1), progress=False, distributed=True)


def test_parallel_map_refuses_nonsense():
    with pytest.raises(distributed.ConfigError, match="workers"):
        distributed.parallel_map(abs, [1], 0)
    assert distributed.parallel_map(abs, [-1, -2], 1) == [1, 2]
