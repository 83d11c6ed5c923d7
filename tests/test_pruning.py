"""End-to-end unstructured pruning under a drop bound, on a small slice of real MNIST."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch

import secateur.search.orchestrator as pruning_module
from retraining import nudge
from secateur.errors import ConfigError
from secateur.io import rundir
from secateur.io.storage import load_model
from secateur.search.orchestrator import PruneConfig, prune
from secateur.train import TrainConfig, correctness, fit
from secateur.unstructured.masks import masks_of
from secateur.zoo.models import build_model

QUICK = {"rounds": 4, "retrain_epochs": 1, "start": 1.0, "step": 1.0}
RETRAIN = TrainConfig(epochs=1, lr=0.05, batch_size=64)


@pytest.fixture
def trained(trained_lenet300):
    return trained_lenet300


def run(trained, small, **options):
    return prune(copy.deepcopy(trained), data=small, train_config=RETRAIN, **{**QUICK, **options})


def accepted_rows(history):
    return [row for row in history if row["feasible"]]


@pytest.mark.parametrize("method", ["han", "global-magnitude"])
def test_final_validation_drop_never_exceeds_the_bound(trained, small, method):
    result = run(trained, small, method=method, max_drop=0.6)
    assert result.results["drop"]["val"] <= 0.6 + 1e-9
    assert all(row["drop"] <= 0.6 + 1e-9 for row in accepted_rows(result.history))
    assert all(row["drop"] + row["margin"] > 0.6 for row in result.history if not row["feasible"])
    assert all(row["drop"] + row["margin"] <= 0.6 + 1e-9 for row in accepted_rows(result.history))
    assert result.compression > 1.5


def test_max_drop_zero_returns_a_model_with_no_validation_drop(trained, small):
    result = run(trained, small, method="magnitude", max_drop=0.0)
    assert result.results["pruned"]["val"]["accuracy"] >= result.results["baseline"]["val"]["accuracy"]
    assert result.results["drop"]["val"] <= 0.0


def test_masks_only_grow_across_accepted_rounds(trained, small):
    result = run(trained, small, method="han", max_drop=5.0, rounds=4)
    rows = accepted_rows(result.history)
    assert len(rows) >= 2
    for earlier, later in itertools.pairwise(rows):
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
    files = [out / name for name in (rundir.CONFIG, rundir.HISTORY, rundir.RESULTS, rundir.WEIGHTS, rundir.MODEL_META)]
    files += [rundir.baseline_dir(out) / rundir.WEIGHTS, *rundir.report_paths(out).values(), out / rundir.TRADEOFF_PNG]
    for path in files:
        assert path.exists(), path
    results = json.loads((out / rundir.RESULTS).read_text())
    for key in ("baseline", "pruned", "params", "compression", "macs", "seconds", "layers"):
        assert key in results
    assert results["params"]["baseline"] == 266_610
    assert results["compression"] == pytest.approx(266_610 / results["params"]["nonzero"])
    assert results["macs"]["baseline"] == 266_200 and results["macs"]["nonzero"] < 266_200
    assert len((out / rundir.HISTORY).read_text().splitlines()) == 2
    reloaded, _ = load_model(rundir.model_base(out))
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(reloaded(x), result.model(x), rtol=0, atol=0)
    sizes = results["bytes"]  # real bytes on disk of each written file, the compact export among them
    assert sizes["pruned"] == (out / rundir.WEIGHTS).stat().st_size
    assert sizes["compact"] == (out / rundir.COMPACT).stat().st_size < sizes["pruned"]
    compact, _ = load_model(out / rundir.COMPACT)
    torch.testing.assert_close(compact(x), result.model(x), rtol=0, atol=0)


def test_killed_run_resumes_to_the_same_masks(trained, small, tmp_path):
    options = {"method": "han", "max_drop": 0.5, "rounds": 4}
    reference = run(trained, small, out=tmp_path / "whole", **options)

    def dying(row):
        if row["round"] == 2:
            raise KeyboardInterrupt  # killed once round 2 is checkpointed
    with pytest.raises(KeyboardInterrupt):
        run(trained, small, out=tmp_path / "killed", on_round=dying, **options)
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
    assert (tmp_path / "sens" / rundir.SENSITIVITY).exists()
    assert (tmp_path / "sens" / rundir.SENSITIVITY_PNG).exists()
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


def _scripted(baseline_hits: torch.Tensor, candidate_hits: torch.Tensor, as_float: bool):
    """An evaluator: the dense model scores ``baseline_hits``, any pruned one ``candidate_hits``."""
    from secateur.analysis.metrics import count_params

    def evaluate(model):
        hits = baseline_hits if count_params(model, nonzero=True) == count_params(model) else candidate_hits
        return int(hits.sum()) / len(hits) if as_float else hits

    return evaluate


def test_a_round_within_the_plain_bound_but_not_its_margin_is_rejected():
    baseline = torch.ones(5000, dtype=torch.bool)
    baseline[25:45] = False  # b = 25 images only the baseline gets right, c = 20 only the candidate
    candidate = torch.ones(5000, dtype=torch.bool)
    candidate[:25] = False  # drop 0.1 points exactly; paired SE 0.134 points
    options = {"train": nudge, "method": "magnitude", "max_drop": 0.1, "rounds": 2}
    model = build_model("lenet300")

    strict = prune(copy.deepcopy(model), evaluate=_scripted(baseline, candidate, False), confidence=1.0, **options)
    assert not any(row["feasible"] for row in strict.history)
    assert strict.history[0]["drop"] == pytest.approx(0.1)
    assert strict.history[0]["margin"] == pytest.approx(0.13416, abs=1e-4)
    assert strict.compression == 1.0 and strict.results["acceptance"]["paired"]

    plain = prune(copy.deepcopy(model), evaluate=_scripted(baseline, candidate, False), confidence=0.0, **options)
    assert all(row["feasible"] for row in plain.history) and plain.compression > 1.0


def test_a_float_evaluator_gets_the_plain_rule_whatever_the_confidence():
    baseline = torch.ones(5000, dtype=torch.bool)
    baseline[25:45] = False
    candidate = torch.ones(5000, dtype=torch.bool)
    candidate[:25] = False
    result = prune(build_model("lenet300"), train=nudge, evaluate=_scripted(baseline, candidate, True),
                   method="magnitude", max_drop=0.1, rounds=2, confidence=3.0)
    assert all(row["feasible"] and row["margin"] == 0.0 for row in result.history)
    assert not result.results["acceptance"]["paired"]
    assert result.results["drop"]["val"] == pytest.approx(0.1)


def test_confidence_is_validated_and_recorded_for_resume(trained, small, tmp_path):
    with pytest.raises(ConfigError, match="confidence"):
        PruneConfig(confidence=-1.0).validate()
    run(trained, small, method="han", max_drop=1.0, rounds=1, confidence=0.5, out=tmp_path / "run")
    assert pruning_module.saved_config(tmp_path / "run").confidence == 0.5


def test_a_run_folder_from_before_the_confidence_setting_resumes_with_the_plain_rule(trained, small, tmp_path):
    import yaml

    run(trained, small, method="han", max_drop=1.0, rounds=1, out=tmp_path / "run")
    path = tmp_path / "run" / rundir.CONFIG
    saved = yaml.safe_load(path.read_text())
    del saved["prune"]["confidence"], saved["prune"]["polish_epochs"]
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    config = pruning_module.saved_config(tmp_path / "run")
    assert config.confidence == 0.0 and config.polish_epochs == 0


def test_the_polish_is_kept_only_if_its_drop_is_within_the_bound(trained, small, monkeypatch):
    kept = run(trained, small, method="han", max_drop=1.0, rounds=2, polish_epochs=1)
    polish = kept.results["polish"]
    assert polish is not None and polish["epochs"] == 1
    chosen_val = kept.history[kept.results["chosen_round"] - 1]["val_accuracy"]
    assert polish["val_accuracy_before"] == chosen_val
    final_val = kept.results["pruned"]["val"]["accuracy"]
    assert final_val == (polish["val_accuracy_after"] if polish["kept"] else chosen_val)

    def ruin(model):  # a polish that makes the model worse must be thrown away
        with torch.no_grad():
            model.fc3.bias.add_(torch.linspace(-5, 5, 10))

    spoiled = run(trained, small, method="han", max_drop=1.0, rounds=2, polish_epochs=1, polish=ruin)
    assert spoiled.results["polish"]["kept"] is False
    assert spoiled.results["pruned"]["val"]["accuracy"] == chosen_val
    assert spoiled.results["drop"]["val"] <= 1.0 + 1e-9
    tolerant = run(trained, small, method="han", max_drop=100.0, rounds=1, polish_epochs=1, polish=ruin)
    assert tolerant.results["polish"]["kept"] is True  # worse on val, but within the bound: kept
    assert tolerant.results["pruned"]["val"]["accuracy"] == tolerant.results["polish"]["val_accuracy_after"]
    assert tolerant.results["pruned"]["val"]["accuracy"] < tolerant.history[0]["val_accuracy"]


def test_distilled_retraining_uses_the_dense_teacher_and_keeps_the_bound(trained, small, monkeypatch):
    calls = []

    def counting_step(model, x, y, *, teacher, weight, temperature):
        calls.append((weight, temperature, teacher.training))
        return real_step(model, x, y, teacher=teacher, weight=weight, temperature=temperature)

    real_step = pruning_module.distill_step
    monkeypatch.setattr(pruning_module, "distill_step", counting_step)
    result = run(trained, small, method="han", max_drop=0.6, distill=0.5, temperature=3.0, rounds=2)
    assert calls and set(calls) == {(0.5, 3.0, False)}
    assert result.results["drop"]["val"] <= 0.6 + 1e-9
    assert result.compression > 1.0


@pytest.mark.parametrize("options", [{"distill": 1.5}, {"distill": 0.5, "temperature": 0.0}])
def test_impossible_distillation_settings_are_config_errors(trained, small, options):
    with pytest.raises(ConfigError, match="distill"):
        run(trained, small, **options)


def test_distill_with_a_custom_train_callable_is_a_config_error(trained, small):
    with pytest.raises(ConfigError, match="distil itself"):
        prune(copy.deepcopy(trained), train=lambda m: None, evaluate=lambda m: 1.0, distill=0.5)


def test_the_polish_is_judged_without_the_search_noise_margin(trained, small):
    # The polish returns, on validation, the baseline's answers with every wrong one made right
    # and as many right ones made wrong: no drop, but a paired standard error whose margin
    # (x confidence 20) is over the 30-point bound.
    baseline = correctness(trained, small, "val")
    wrong = torch.nonzero(~baseline)[:, 0]
    flipped = baseline.clone()
    flipped[torch.nonzero(baseline)[: len(wrong), 0]] = False
    flipped[wrong] = True
    polishing = {"now": False}

    def polish(model):
        polishing["now"] = True
        nudge(model)

    def evaluate(model):
        return flipped if polishing["now"] else correctness(model, small, "val")

    result = run(trained, small, method="han", max_drop=30.0, rounds=1, start=0.5, confidence=20.0,
                 evaluate=evaluate, polish=polish)
    assert result.history[0]["feasible"]
    polish_row = result.results["polish"]
    assert polishing["now"] and polish_row["drop"] == 0.0 and polish_row["margin"] > 30.0
    assert polish_row["kept"] is True
    assert result.results["pruned"]["val"]["accuracy"] == polish_row["val_accuracy_after"]


def test_the_first_strength_is_about_4x_at_either_granularity():
    assert PruneConfig().search_settings().start == 2.0  # weights: 1 - 2^-2 of each layer
    assert PruneConfig(granularity="channel").search_settings().start == 1.0  # half the channels: ~4x params
    assert PruneConfig(granularity="neuron", start=0.5).search_settings().start == 0.5


def test_han_masks_are_bitwise_those_of_before_the_pruner_protocol(trained, small):
    """The refactor onto the Pruner protocol kept the search's decisions: same seed, same masks, bit for bit.

    The hash was recorded with the code before the refactor (commit f6304d9), on this setting.
    """
    import hashlib

    result = run(trained, small, method="han", max_drop=0.6, rounds=4, polish_epochs=1)
    digest = hashlib.sha256()
    for name, mask in sorted(masks_of(result.model).items()):
        digest.update(name.encode())
        digest.update(mask.to(torch.uint8).numpy().tobytes())
    assert digest.hexdigest() == "4be0944dd6244c7381db1c32c3adeb6fd35ad818c01a2c0c21b306801bb75895"
