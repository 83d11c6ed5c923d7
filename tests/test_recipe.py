"""Recipe files: the same option names as the flags and the API, flags override, a run's config is a recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from secateur.app.cli import main
from secateur.app.recipe import parse_recipe, read_recipe
from secateur.errors import ConfigError
from secateur.io import rundir
from secateur.search.config import PruneConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_keys_are_the_option_names_with_dashes_or_underscores(tmp_path):
    recipe = read_recipe(write(tmp_path, "model: lenet5\ndataset: digits\nmax-drop: 0.3\ngranularity: channel\n"
                                         "min_channels: 2\nlr: 0.02\nepochs: 3\n"))
    assert recipe.model == "lenet5" and recipe.dataset == "digits"
    assert recipe.prune == {"max_drop": 0.3, "granularity": "channel", "min_channels": 2}
    assert recipe.train == {"lr": 0.02, "epochs": 3}
    config = PruneConfig.from_dict(recipe.prune)
    assert config.method == "l1" and config.min_channels == 2


@pytest.mark.parametrize("text, fragment", [
    ("max_drop: 0.1\nmax_dorp: 0.2\n", "unknown option(s) max_dorp"),
    ("granularity: block\n", "unknown granularity 'block'"),
    ("granularity: channel\nallocation: sensitivity\n", "option allocation applies to granularity"),
    ("max_drop: [1, 2\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "a recipe is a mapping"),
    ("max_drop: -1\n", "max drop must be >= 0"),
    ("rounds: many\n", "rounds: expected a whole number, got 'many'"),
])
def test_bad_recipes_are_one_line_errors_naming_the_file(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        read_recipe(path)
    message = str(error.value)
    assert fragment in message and "\n" not in message
    assert str(path) in message


def test_cli_flags_override_the_recipe_and_config_yaml_is_itself_a_recipe(tmp_path, capsys):
    recipe = write(tmp_path, "model: lenet300\ndataset: digits\nepochs: 2\nrounds: 1\nmax_drop: 5\n"
                             "retrain_epochs: 1\npolish_epochs: 0\n")
    first = tmp_path / "first"
    assert main(["prune", "--config", str(recipe), "--rounds", "2", "--out", str(first), "--quiet"]) == 0
    saved = yaml.safe_load((first / rundir.CONFIG).read_text())
    assert saved["prune"]["rounds"] == 2 and saved["prune"]["max_drop"] == 5  # the flag won, the file did the rest
    again = tmp_path / "again"
    assert main(["prune", "--config", str(first / rundir.CONFIG), "--from", str(rundir.baseline_dir(first)),
                 "--dataset", "digits", "--out", str(again), "--quiet"]) == 0
    capsys.readouterr()
    assert yaml.safe_load((again / rundir.CONFIG).read_text())["prune"] == saved["prune"]
    assert parse_recipe(saved).prune == saved["prune"]
