"""Structured pruning under the drop bound (``granularity="neuron"|"channel"``), on real MNIST."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from torch import nn

from retraining import nudge
from secateur.errors import ConfigError
from secateur.io import rundir
from secateur.io.storage import load_model
from secateur.search.orchestrator import PruneConfig, prune
from secateur.structured import apply_plan, prune_channels
from secateur.structured.plan import compose
from secateur.structured.pruner import removed_fraction
from secateur.train import TrainConfig, evaluate
from secateur.unstructured.masks import masks_of
from secateur.zoo.models import build_model

QUICK = {"rounds": 3, "retrain_epochs": 1, "start": 1.0, "step": 1.0}
RETRAIN = TrainConfig(epochs=1, lr=0.05, batch_size=64)
X = torch.randn(6, 1, 28, 28)


@pytest.fixture
def trained(trained_lenet5):
    return trained_lenet5


def kill_after(round_index: int):
    """An ``on_round`` hook that interrupts the run once round ``round_index`` is checkpointed."""
    def hook(row: dict) -> None:
        if row["round"] == round_index:
            raise KeyboardInterrupt
    return hook


def run(trained, small, **options):
    return prune(copy.deepcopy(trained), data=small, train_config=RETRAIN,
                 **{**QUICK, "granularity": "channel", **options})


def out_channels(model: nn.Module) -> dict[str, int]:
    return {name: m.weight.shape[0] for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_composed_plan_equals_pruning_twice():
    torch.manual_seed(1)
    original = build_model("lenet5").eval()
    once, first = prune_channels(original, X[:1], 0.5, inplace=False)
    twice, second = prune_channels(once, X[:1], 0.4, inplace=False)
    rebuilt = apply_plan(copy.deepcopy(original), compose(first, second))
    assert out_channels(rebuilt) == out_channels(twice)
    torch.testing.assert_close(rebuilt(X), twice(X), rtol=0, atol=0)


def test_strength_maps_to_the_fraction_removed():
    assert removed_fraction(0) == 0 and removed_fraction(1) == 0.5 and removed_fraction(2) == 0.75


def test_channel_run_shrinks_within_the_bound_and_reloads(trained, small, tmp_path):
    meta = {"model": {"name": "lenet5", "args": {}}, "dataset": "mnist"}
    result = run(trained, small, max_drop=1.0, out=tmp_path / "run", meta=meta)
    res = result.results
    assert res["granularity"] == "channel" and "channels" in res
    assert res["drop"]["val"] <= 1.0 + 1e-9
    assert all(row["drop"] <= 1.0 + 1e-9 for row in result.history if row["feasible"])
    assert res["params"]["total"] < res["params"]["baseline"] and res["macs"]["dense"] < res["macs"]["baseline"]
    assert not masks_of(result.model) and not any(hasattr(m, "parametrizations") for m in result.model.modules())
    assert res["channels"]["fc2"] == {"before": 10, "after": 10}  # the classifier is never pruned
    assert res["channels"]["conv2"]["after"] < 50
    assert set(res["latency"]) == {"b1_before", "b1_after", "b32_before", "b32_after"}
    assert json.loads((tmp_path / "run" / rundir.RESULTS).read_text())["channels"] == res["channels"]
    reloaded, _ = load_model(rundir.model_base(tmp_path / "run"))  # rebuilt from the factory + plan
    result.model.eval()
    torch.testing.assert_close(reloaded(X), result.model.cpu()(X), rtol=0, atol=0)
    assert "channels" in rundir.report_paths(tmp_path / "run")["md"].read_text().lower()


def test_channels_never_come_back_across_rounds(trained, small):
    result = run(trained, small, max_drop=50.0, rounds=3)
    rows = [row for row in result.history if row["feasible"]]
    assert len(rows) == 3
    for earlier, later in itertools.pairwise(rows):
        for name, counts in later["layers"].items():
            assert counts["nonzero"] <= earlier["layers"][name]["nonzero"]
            assert counts["total"] == earlier["layers"][name]["total"]  # always the baseline's size
    conv2 = result.results["channels"]["conv2"]["after"]
    assert conv2 == 50 - int(50 * removed_fraction(result.history[-1]["strength"]))


def test_neuron_granularity_keeps_convolutions_whole(trained, small):
    result = run(trained, small, granularity="neuron", max_drop=50.0, rounds=1)
    channels = result.results["channels"]
    assert channels["conv1"] == {"before": 20, "after": 20} and channels["conv2"] == {"before": 50, "after": 50}
    assert channels["fc1"]["after"] == 250


def test_global_scope_and_oneshot_schedule(trained, small):
    result = run(trained, small, scope="global", schedule="oneshot", max_drop=50.0, rounds=2)
    kept = {name: c["after"] / c["before"] for name, c in result.results["channels"].items() if name != "fc2"}
    assert len({round(k, 2) for k in kept.values()}) > 1  # one ranking: layers lose different shares
    assert result.results["params"]["total"] < 431_080


def test_killed_structured_run_resumes_to_the_same_model(trained, small, tmp_path):
    options = {"max_drop": 50.0, "rounds": 3}
    reference = run(trained, small, out=tmp_path / "whole", **options)
    with pytest.raises(KeyboardInterrupt):  # killed once round 2 is checkpointed
        run(trained, small, out=tmp_path / "killed", on_round=kill_after(2), **options)
    resumed = run(trained, small, out=tmp_path / "killed", resume=True, **options)
    assert out_channels(resumed.model) == out_channels(reference.model)
    expected, got = reference.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("options, message", [
    ({"method": "han"}, "does not apply to granularity 'channel'"),
    ({"schedule": "gradual"}, "gradual"),
    ({"allocation": "sensitivity"}, "allocation"),
    ({"scope": "everywhere"}, "scope"),
    ({"granularity": "block"}, "unknown granularity"),
    ({"round_to": 0}, "round-to"),
])
def test_impossible_structured_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**{"granularity": "channel", **options}).validate()


def test_custom_callables_need_an_input_shape_for_tracing(trained, small):
    def val(model):
        return evaluate(model, small, "val")

    with pytest.raises(ConfigError, match="input_shape"):
        prune(copy.deepcopy(trained), train=lambda m: None, evaluate=val, granularity="channel")
    with pytest.raises(ConfigError, match="taylor"):
        prune(copy.deepcopy(trained), train=lambda m: None, evaluate=val, granularity="channel",
              method="taylor", input_shape=(1, 28, 28))
    result = prune(copy.deepcopy(trained), train=nudge, evaluate=val, granularity="neuron",
                   input_shape=(1, 28, 28), max_drop=100.0, rounds=1, start=1.0)
    assert result.results["channels"]["fc1"]["after"] == 250
