"""Property-based fuzzing of the command line and of edited run folders (hypothesis).

Whatever a user types, or however a run folder was edited or damaged, secateur either works or
stops with exit code 2 and one line on stderr, without a traceback, and leaves every file the
user had byte-identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from secateur.app.cli import main
from secateur.io import rundir
from secateur.search.config import PruneConfig
from secateur.search.pruner import GRANULARITIES, method_names
from secateur.search.schedules import SCHEDULES

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own exit for usage mistakes
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def numeric_flags() -> dict[str, str]:
    """``--flag`` -> value kind, for every prune option the CLI takes a number for."""
    return {"--" + f.name.replace("_", "-"): f.metadata["kind"] for f in dataclasses.fields(PruneConfig)
            if (f.metadata.get("kind") or "").startswith(("int", "float"))}


def invalid_for(kind: str) -> st.SearchStrategy[str]:
    """Text that is not a valid value of ``kind`` (``int>=1``, ``float>=0``, ``float>0``, ...)."""
    match = re.fullmatch(r"(int|float)(>=|>)(\d+)", kind)
    assert match, kind
    number, inclusive, bound = match.group(1), match.group(2) == ">=", int(match.group(3))
    words = st.text(min_size=1, max_size=8).filter(lambda s: not _is_number(s))
    nonfinite = st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999"])
    if number == "int":
        too_small = st.integers(max_value=bound - 1 if inclusive else bound).map(str)
        return st.one_of(words, nonfinite, too_small, st.just("1.5"))
    too_small = st.floats(max_value=bound, exclude_max=inclusive, allow_nan=False, allow_infinity=False)
    return st.one_of(words, nonfinite, too_small.map(repr))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@FAST
@given(data=st.data())
def test_any_bad_number_on_any_prune_flag_is_one_line_and_writes_nothing(capsys, tmp_path, data):
    flag, kind = data.draw(st.sampled_from(sorted(numeric_flags().items())))
    value = data.draw(invalid_for(kind))
    out = tmp_path / "out"
    code, err = run(capsys, ["prune", "--model", "lenet300", "--dataset", "digits", "--out", str(out), flag, value])
    assert_one_line(code, err)
    assert not out.exists()


@FAST
@given(data=st.data())
def test_any_unknown_name_is_one_line_listing_the_choices(capsys, tmp_path, data):
    flag = data.draw(st.sampled_from(["--method", "--granularity", "--schedule"]))
    name = data.draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-:0123456789", min_size=1, max_size=10))
    assume(name not in GRANULARITIES and name not in method_names() and name not in SCHEDULES)
    assume(not name.startswith("-"))
    out = tmp_path / "out"
    code, err = run(capsys, ["prune", "--model", "lenet300", "--dataset", "digits", "--out", str(out), flag, name])
    assert_one_line(code, err)
    assert "choose one of" in err or "does not apply" in err or "unknown" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small finished prune run on digits (made once per module)."""
    out = tmp_path_factory.mktemp("prop") / "run"
    code = main(["prune", "--model", "lenet300", "--dataset", "digits", "--epochs", "1", "--rounds", "1",
                 "--retrain-epochs", "1", "--polish-epochs", "0", "--out", str(out), "--quiet"])
    assert code == 0
    return out


RUN_FILES = (rundir.CONFIG, rundir.STATE, rundir.RESULTS, rundir.HISTORY, rundir.MODEL_META,
             f"{rundir.BASELINE}/{rundir.MODEL_META}")


def mutate(text: str, how: str, position: float, junk: str) -> str:
    cut = int(position * len(text))
    if how == "truncate":
        return text[:cut]
    if how == "insert":
        return text[:cut] + junk + text[cut:]
    return text[:cut] + junk + text[cut + len(junk):]  # overwrite


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(RUN_FILES), how=st.sampled_from(["truncate", "insert", "overwrite"]),
       position=st.floats(0, 1), junk=st.text(min_size=1, max_size=6))
def test_a_damaged_run_folder_is_read_or_refused_in_one_line(capsys, finished_run, name, how, position, junk):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        shutil.copytree(finished_run, folder)
        target = folder / name
        target.write_text(mutate(target.read_text(), how, position, junk))
        before = snapshot(folder)
        for argv in (["info", str(folder)], ["report", str(folder)]):
            code, err = run(capsys, argv)
            if code != 0:
                assert_one_line(code, err)
        after = snapshot(folder)
        reports = {p for p in after if p.startswith(("report.", "tradeoff", "layers"))}
        assert {k: v for k, v in after.items() if k not in reports} == {
            k: v for k, v in before.items() if k not in reports}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["max_drop", "rounds", "method", "granularity", "confidence", "scope", "seed"]),
       value=st.one_of(st.text(max_size=5), st.integers(), st.floats(), st.none(), st.lists(st.integers(), max_size=2)))
def test_an_edited_config_yaml_is_resumed_or_refused_in_one_line(capsys, finished_run, key, value):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        shutil.copytree(finished_run, folder)
        config = yaml.safe_load((folder / rundir.CONFIG).read_text())
        config["prune"][key] = value
        (folder / rundir.CONFIG).write_text(yaml.safe_dump(config))
        (folder / rundir.RESULTS).unlink()  # interrupted: resume reads the edited config
        marker = json.loads((folder / rundir.MARKER).read_text())
        (folder / rundir.MARKER).write_text(json.dumps({**marker, "finished": False}))
        before = snapshot(folder)
        code, err = run(capsys, ["prune", "--out", str(folder), "--resume", "--quiet"])
        if code != 0:
            assert_one_line(code, err)
            assert snapshot(folder) == before
