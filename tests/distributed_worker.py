"""One rank of tests/test_distributed.py's torchrun launch: ``python -m torch.distributed.run
--nproc-per-node 2 tests/distributed_worker.py ROOT``.

Each rank trains a LeNet-300 data-parallel, runs a whole pruning search, an interrupted one and
its resume (the API, on an MNIST subset), then ``secateur prune --granularity neuron`` and its
``--resume`` (the command line, on the offline digits), and writes what it saw to
``ROOT/rank-N.json``: digests of its models and masks, its results, and every path under the run
folders it opened for writing, renamed or made (an audit hook; rank 0 alone may write there).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import torch

import secateur
from secateur import distributed
from secateur.app.cli import main as cli_main
from secateur.unstructured.masks import masks_of

OPTIONS = {"method": "han", "max_drop": 2.0, "rounds": 2, "retrain_epochs": 1, "polish_epochs": 1}
CLI = ["prune", "--model", "lenet300", "--dataset", "digits", "--granularity", "neuron", "--epochs", "1",
       "--rounds", "1", "--retrain-epochs", "1", "--polish-epochs", "0", "--max-drop", "5", "--quiet"]  # plans checked
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class Stop(Exception):
    """Raised from on_round: the run is killed once round 1 is checkpointed."""


def watch_writes(root: Path, seen: list[str]) -> None:
    """Record every file opened for writing, and every rename, mkdir or removal, under ``root``."""
    events = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.replace"}

    def hook(event: str, args: tuple) -> None:
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
        elif event in events and args:
            path, writes = args[0], True
        else:
            return
        if writes and isinstance(path, (str, os.PathLike)) and str(root) in os.fspath(path):
            seen.append(f"{event} {os.fspath(path)}")

    sys.addaudithook(hook)


def digest(model: torch.nn.Module) -> dict:
    masks = masks_of(model)
    return {"state": distributed.state_sha256(model),
            "masks": {name: int(mask.sum()) for name, mask in masks.items()},
            "mask_sha": distributed.state_sha256(torch.nn.ParameterDict(
                {name.replace(".", "_"): torch.nn.Parameter(mask.float(), requires_grad=False)
                 for name, mask in sorted(masks.items())}))}


def command_line(argv: list[str]) -> dict:
    """``secateur ARGV`` as this rank runs it under the launch: exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(root: Path) -> None:
    torch.set_num_threads(1)
    seen: list[str] = []
    report: dict = {}
    with distributed.session(True):
        rank = distributed.rank()
        report["world"] = distributed.world_size()
        watch_writes(root / "runs", seen)  # rank 0's list shows the hook sees the run's writes
        data = secateur.load_dataset("mnist").subset(train=1000, val=500, test=500)
        torch.manual_seed(0)
        model = secateur.build_model("lenet300")
        secateur.fit(model, data, secateur.TrainConfig(epochs=2, lr=0.05), progress=False, distributed=True)
        report["baseline"] = distributed.state_sha256(model)
        whole = secateur.prune(model, data=data, out=root / "runs" / "whole", distributed=True, **OPTIONS)
        report["whole"] = {**digest(whole.model), "results": whole.results, "history": whole.history}

        def dying(row: dict) -> None:
            if row["round"] == 1:
                raise Stop

        try:
            secateur.prune(model, data=data, out=root / "runs" / "killed", on_round=dying, **OPTIONS)
        except Stop:
            report["killed"] = True
        resumed = secateur.prune(model, data=data, out=root / "runs" / "killed", resume=True, **OPTIONS)
        report["resumed"] = {**digest(resumed.model), "results": resumed.results}
        report["cli"] = [command_line([*CLI, "--out", str(root / "runs" / "cli")]),
                         command_line(["prune", "--out", str(root / "runs" / "cli"), "--resume", "--quiet"])]
    digits = secateur.load_dataset("digits")  # two calls that each join and leave the group; the process still exits
    small = secateur.build_model("lenet300", input_shape=(1, 8, 8))
    report["own_groups"] = [secateur.prune(small, data=digits, max_drop=5, rounds=1, retrain_epochs=1, polish_epochs=0,
                                           distributed=True).results["processes"] for _ in range(2)]
    report["writes"] = seen
    (root / f"rank-{rank}.json").write_text(json.dumps(report, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
