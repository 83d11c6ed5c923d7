"""Every registered method, granularity and schedule gets the same invariant tests for free.

The parameters come from the registries themselves, so a new entry is tested the moment it is
registered, and no test here pins what a registry holds.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml

from secateur.app.cli import build_parser, main
from secateur.app.recipe import parse_recipe
from secateur.errors import ConfigError
from secateur.export import EXPORT_FORMATS
from secateur.io import rundir
from secateur.io.storage import load_model
from secateur.search.config import PruneConfig
from secateur.search.orchestrator import prune, saved_config
from secateur.search.pruner import GRANULARITIES, Learned, method_names
from secateur.search.schedules import SCHEDULES
from secateur.structured import analyse, prune_channels
from secateur.structured.importance import GROUP_METHODS
from secateur.train import TrainConfig
from secateur.unstructured.methods import WEIGHT_METHODS
from secateur.zoo.models import build_model


def granularity_names() -> list[str]:
    """Every granularity, a pattern family by its example (``n:m`` -> ``2:4``)."""
    return [GRANULARITIES.get(name).name for name in GRANULARITIES.names()]


def select_at(method: str, weights: dict[str, torch.Tensor], strength: float) -> dict[str, torch.Tensor]:
    entry = WEIGHT_METHODS.get(method)
    level = entry.strength_to_level(strength)
    levels = level if entry.scope == "global" else dict.fromkeys(weights, level)
    context = {"reference_std": {n: float(w.std()) for n, w in weights.items()},
               "generator": torch.Generator().manual_seed(1),
               "learned": Learned({}, {n: w.abs() for n, w in weights.items()}, {})}  # a learned method's scores
    return entry.select(weights, levels, **{need: context[need] for need in entry.needs})


@pytest.mark.parametrize("method", WEIGHT_METHODS.names())
def test_weight_methods_deepen_with_strength_and_masks_only_grow(method):
    g = torch.Generator().manual_seed(0)
    weights = {"a.weight": torch.randn(60, 40, generator=g), "b.weight": 3 * torch.randn(30, 20, generator=g)}
    total = sum(w.numel() for w in weights.values())
    pruned = []
    for strength in (0.5, 1.0, 2.0, 3.0):
        masks = select_at(method, weights, strength)
        assert all(masks[n].dtype == torch.bool and masks[n].shape == w.shape for n, w in weights.items())
        pruned.append(sum(int((~m).sum()) for m in masks.values()))
    assert pruned == sorted(pruned) and pruned[0] > 0
    assert 0.6 < pruned[2] / total < 0.9  # strength 2 removes about three quarters
    first = select_at(method, weights, 1.0)
    again = select_at(method, {n: w * first[n] for n, w in weights.items()}, 2.0)
    assert not any((again[n] & ~first[n]).any() for n in weights)  # what was pruned stays pruned


@pytest.fixture(scope="module")
def lenet5_example():
    torch.manual_seed(0)
    return build_model("lenet5"), torch.zeros(1, 1, 28, 28)


@pytest.mark.parametrize("method", GROUP_METHODS.names())
def test_group_methods_score_every_channel_and_prune_to_a_working_model(method, lenet5_example):
    model, x = lenet5_example
    graph = analyse(model, x)
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))]
    scores = GROUP_METHODS.get(method)(model, graph, batches=batches, generator=torch.Generator().manual_seed(0),
                                       learned=Learned({}, {}, {}))
    for group in graph.groups:
        assert scores[group.name].shape == (group.size,) and torch.isfinite(scores[group.name]).all()
    if GROUP_METHODS.get(method).learn is not None:  # a fixed amount has no training phase: refused in one line
        with pytest.raises(ConfigError, match="training phase"):
            prune_channels(model, x, 0.5, method=method, batches=batches, inplace=False)
        return
    pruned, _ = prune_channels(model, x, 0.5, method=method, batches=batches,
                               generator=torch.Generator().manual_seed(0), inplace=False)
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("granularity", granularity_names())
@pytest.mark.parametrize("method", method_names())
def test_every_method_granularity_pair_validates_or_is_a_one_line_error(granularity, method):
    spec = GRANULARITIES.get(granularity)
    if method in spec.methods:
        assert PruneConfig(granularity=granularity, method=method).validate().method == method
    else:
        with pytest.raises(ConfigError, match=f"granularity '{granularity}'") as error:
            PruneConfig(granularity=granularity, method=method).validate()
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("granularity", granularity_names())
@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_a_schedule_that_prunes_during_training_needs_a_continuous_granularity(granularity, schedule):
    config = PruneConfig(granularity=granularity, schedule=schedule)
    if SCHEDULES.get(schedule).continuous and not GRANULARITIES.get(granularity).continuous:
        with pytest.raises(ConfigError, match=schedule):
            config.validate()
    else:
        assert config.validate().schedule == schedule


@pytest.mark.parametrize("granularity", granularity_names())
def test_options_of_other_granularities_are_refused(granularity):
    spec = GRANULARITIES.get(granularity)
    others = {name for g in granularity_names() for name in GRANULARITIES.get(g).options} - spec.options
    changed = {"scope": "global", "min_channels": 2, "round_to": 2, "ignore": ("fc1",), "allocation": "uniform",
               "factors": {"fc1.weight": 1.0}, "tolerance": 2.0, "learn_epochs": 2,
               "learn_penalty": 2.0, "attention": "head-dims"}
    for option in sorted(others):
        with pytest.raises(ConfigError, match=f"option {option} applies to granularity"):
            PruneConfig(granularity=granularity, **{option: changed[option]}).validate()


def test_every_registered_name_is_listed_and_accepted_by_the_cli(capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    for name in [*GRANULARITIES.names(), *method_names(), *SCHEDULES.names(), *EXPORT_FORMATS.names()]:
        assert f"  {name} " in listing
    for name in EXPORT_FORMATS.names():
        assert build_parser().parse_args(["export", ".", "--format", name, "--out", "x"]).format == name
    for method in method_names():
        args = build_parser().parse_args(["prune", "--model", "lenet5", "--out", "x", "--method", method])
        assert args.method == method


@pytest.mark.parametrize("granularity", granularity_names())
def test_every_granularity_runs_under_the_bound_and_its_run_folder_reloads(granularity, trained_lenet5, small,
                                                                            tmp_path):
    out = tmp_path / "run"
    result = prune(copy.deepcopy(trained_lenet5), data=small, train_config=TrainConfig(epochs=1, lr=0.05),
                   granularity=granularity, max_drop=3.0, rounds=2, retrain_epochs=1, polish_epochs=0, out=out)
    res = result.results
    assert res["granularity"] == granularity and res["method"] == GRANULARITIES.get(granularity).default_method
    assert res["drop"]["val"] <= 3.0 + 1e-9
    assert res["params"]["nonzero"] < res["params"]["baseline"] and math.isfinite(res["compression"])
    nonzero = [row["params_nonzero"] for row in result.history if row["feasible"]]
    assert nonzero == sorted(nonzero, reverse=True)  # every kept round is smaller than the last
    for name in (rundir.CONFIG, rundir.HISTORY, rundir.STATE, rundir.RESULTS, rundir.WEIGHTS, rundir.MODEL_META,
                 "report.md", "report.html"):
        assert (out / name).exists(), name
    reloaded, _ = load_model(rundir.model_base(out))
    x = torch.randn(4, 1, 28, 28)
    result.model.eval()
    torch.testing.assert_close(reloaded(x), result.model(x), rtol=0, atol=0)
    recipe = parse_recipe(yaml.safe_load((out / rundir.CONFIG).read_text()))
    assert PruneConfig.from_dict(recipe.prune) == saved_config(out)  # a run's config.yaml is a recipe


def test_a_pattern_family_resolves_its_members_and_refuses_impossible_ones():
    assert GRANULARITIES.get("2:4").name == "2:4" and GRANULARITIES.get("1:8").name == "1:8"
    assert GRANULARITIES.get("n:m").name == "2:4"  # the family's listed name resolves to its example
    assert "4:4" not in GRANULARITIES and "5:3" not in GRANULARITIES and "2:4" in GRANULARITIES
    with pytest.raises(ConfigError, match="0 < n < m"):
        PruneConfig(granularity="5:3").validate()
