"""End-to-end unstructured pruning under a drop bound, on a small slice of real MNIST."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import secateur.pruning as pruning_module
from secateur.errors import ConfigError
from secateur.masks import masks_of
from secateur.models import build_model
from secateur.pruning import PruneConfig, prune
from secateur.storage import load_model
from secateur.train import TrainConfig, fit

QUICK = dict(rounds=4, retrain_epochs=1, start=1.0, step=1.0)
RETRAIN = TrainConfig(epochs=1, lr=0.05, batch_size=64)


@pytest.fixture(scope="module")
def trained(small):
    torch.manual_seed(0)
    model = build_model("lenet300")
    fit(model, small, TrainConfig(epochs=3, lr=0.05), progress=False)
    return model


def run(trained, small, **options):
    return prune(copy.deepcopy(trained), data=small, train_config=RETRAIN, **{**QUICK, **options})


def accepted_rows(history):
    return [row for row in history if row["accepted"]]


@pytest.mark.parametrize("method", ["han", "global-magnitude"])
def test_final_validation_drop_never_exceeds_the_bound(trained, small, method):
    result = run(trained, small, method=method, max_drop=0.6)
    assert result.results["drop"]["val"] <= 0.6 + 1e-9
    assert all(row["drop"] <= 0.6 + 1e-9 for row in accepted_rows(result.history))
    assert all(row["drop"] > 0.6 for row in result.history if not row["feasible"])
    assert result.compression > 1.5


def test_max_drop_zero_returns_a_model_with_no_validation_drop(trained, small):
    result = run(trained, small, method="magnitude", max_drop=0.0)
    assert result.results["pruned"]["val"]["accuracy"] >= result.results["baseline"]["val"]["accuracy"]
    assert result.results["drop"]["val"] <= 0.0


def test_masks_only_grow_across_accepted_rounds(trained, small):
    result = run(trained, small, method="han", max_drop=5.0, rounds=4)
    rows = accepted_rows(result.history)
    assert len(rows) >= 2
    for earlier, later in zip(rows, rows[1:]):
        for name, counts in later["layers"].items():
            assert counts["nonzero"] <= earlier["layers"][name]["nonzero"]


def test_the_input_model_is_left_untouched(trained, small):
    before = copy.deepcopy(trained.state_dict())
    run(trained, small, rounds=1)
    assert all(torch.equal(before[k], trained.state_dict()[k]) for k in before)
    assert not masks_of(trained)


def test_custom_train_and_evaluate_callables(trained, small):
    from secateur.train import evaluate

    calls = []

    def train(model):
        calls.append(1)
        fit(model, small, RETRAIN, progress=False)

    result = prune(copy.deepcopy(trained), train=train, evaluate=lambda m: evaluate(m, small, "val"),
                   method="random", max_drop=50.0, rounds=2, retrain_epochs=1)
    assert len(calls) == 2
    assert result.results["pruned"]["test"]["accuracy"] is None  # no test data given: not invented


def test_run_folder_and_results_keys(trained, small, tmp_path):
    result = run(trained, small, method="han", max_drop=1.0, rounds=2, out=tmp_path / "run",
                 meta={"model": {"name": "lenet300", "args": {"input_shape": [1, 28, 28], "num_classes": 10}},
                       "dataset": "mnist"})
    out = tmp_path / "run"
    for name in ("config.yaml", "history.jsonl", "results.json", "model.safetensors", "model.json",
                 "baseline/model.safetensors", "report.md", "report.html", "tradeoff.png"):
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    for key in ("baseline", "pruned", "params", "compression", "macs", "seconds", "layers"):
        assert key in results
    assert results["params"]["baseline"] == 266_610
    assert results["compression"] == pytest.approx(266_610 / results["params"]["nonzero"])
    assert results["macs"]["baseline"] == 266_200 and results["macs"]["nonzero"] < 266_200
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
    reloaded, _ = load_model(out / "model")
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(reloaded(x), result.model(x), rtol=0, atol=0)


def test_killed_run_resumes_to_the_same_masks(trained, small, tmp_path, monkeypatch):
    options = dict(method="han", max_drop=0.5, rounds=4)
    reference = run(trained, small, out=tmp_path / "whole", **options)

    real_round = pruning_module._run_round

    def dying_round(state, strength):
        if state.state.round == 2:
            raise KeyboardInterrupt  # killed in the middle of round 3
        return real_round(state, strength)

    monkeypatch.setattr(pruning_module, "_run_round", dying_round)
    with pytest.raises(KeyboardInterrupt):
        run(trained, small, out=tmp_path / "killed", **options)
    monkeypatch.setattr(pruning_module, "_run_round", real_round)
    with pytest.raises(ConfigError, match="--resume"):
        run(trained, small, out=tmp_path / "killed", **options)
    resumed = run(trained, small, out=tmp_path / "killed", resume=True, **options)

    expected, got = masks_of(reference.model), masks_of(resumed.model)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [r["strength"] for r in resumed.history] == [r["strength"] for r in reference.history]


def test_bad_options_are_config_errors(trained, small):
    with pytest.raises(ConfigError, match="unknown prune option"):
        run(trained, small, max_dorp=0.1)
    with pytest.raises(ConfigError):
        run(trained, small, max_drop=-1)
    with pytest.raises(ConfigError, match="give data="):
        prune(copy.deepcopy(trained), method="han")
    with pytest.raises(ConfigError):
        PruneConfig(method="global-magnitude", factors={"fc1.weight": 2.0}).validate()


def test_allocations(trained, small, tmp_path):
    by_sensitivity = run(trained, small, method="han", allocation="sensitivity", max_drop=5.0, rounds=1,
                         out=tmp_path / "sens")
    assert (tmp_path / "sens" / "sensitivity.json").exists()
    assert (tmp_path / "sens" / "sensitivity.png").exists()
    uniform = run(trained, small, method="han", allocation="uniform", max_drop=5.0, rounds=1)
    default = run(trained, small, method="han", max_drop=5.0, rounds=1)
    kept = {r["name"]: r["kept"] for r in uniform.results["layers"]}
    assert max(kept.values()) - min(kept.values()) < 0.25  # same q per layer: similar fractions
    kept = {r["name"]: r["kept"] for r in default.results["layers"]}
    assert kept["fc3.weight"] > kept["fc1.weight"]  # magnitude allocation spares the classifier
    assert by_sensitivity.results["compression"] > 1.0
    with pytest.raises(ConfigError, match="unknown allocation"):
        PruneConfig(allocation="greedy").validate()
    with pytest.raises(ConfigError):
        PruneConfig(method="global-magnitude", allocation="sensitivity").validate()
