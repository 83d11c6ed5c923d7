"""The L1 weight penalty (``TrainConfig.l1``) and the sweep options Han's Figure 5 needs (schedule,
no retraining, test accuracy per point)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from secateur.analysis.sweep import check_sweep, sweep
from secateur.app.cli import main
from secateur.app.recipe import parse_recipe
from secateur.errors import ConfigError
from secateur.io import rundir
from secateur.search.orchestrator import default_callables
from secateur.train import TrainConfig, default_step, evaluate, fit, l1_norm, l1_step
from secateur.unstructured.masks import apply_masks


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 26 * 26, 10))


def test_l1_adds_exactly_l1_times_the_abs_sum_of_linear_and_conv_weights():
    model, x, y = tiny(), torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        weights = float(model[0].weight.abs().sum() + model[4].weight.abs().sum())  # no biases, no BatchNorm
    assert float(l1_norm(model).detach()) == pytest.approx(weights, rel=1e-6)
    plain, penalised = default_step(model, x, y), l1_step(model, x, y, step=default_step, l1=1e-3)
    assert float((penalised - plain).detach()) == pytest.approx(1e-3 * weights, rel=1e-5)


def test_l1_counts_only_the_surviving_weights_of_a_masked_layer():
    model = tiny()
    keep = torch.rand(model[4].weight.shape) > 0.7
    with torch.no_grad():
        expected = float(model[4].weight[keep].abs().sum() + model[0].weight.abs().sum())
    apply_masks(model, {"4.weight": keep})
    assert float(l1_norm(model).detach()) == pytest.approx(expected, rel=1e-5)


def test_fit_with_l1_moves_each_weight_by_lr_l1_sign_and_leaves_biases(small):
    one_batch = small.subset(train=64)
    config = TrainConfig(epochs=1, batch_size=64, lr=0.1, momentum=0.0, weight_decay=0.0, lr_schedule="constant")
    models = []
    for l1 in (0.0, 0.01):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        start = model[1].weight.detach().clone()
        fit(model, one_batch, config.replace(l1=l1), progress=False)
        models.append(model)
    plain, penalised = models
    shift = penalised[1].weight.detach() - plain[1].weight.detach()
    assert torch.allclose(shift, -0.1 * 0.01 * start.sign(), atol=1e-6)
    assert torch.equal(plain[1].bias, penalised[1].bias)


@pytest.mark.parametrize("value", [-1e-5, float("nan"), float("inf")])
def test_a_negative_or_non_finite_l1_is_a_one_line_config_error(value):
    with pytest.raises(ConfigError, match="l1") as info:
        TrainConfig(l1=value).validate()
    assert "\n" not in str(info.value)


def test_l1_is_a_recipe_key_and_a_cli_flag(capsys, tmp_path):
    assert TrainConfig.from_dict({"l1": 2e-5, "weight_decay": 0}).l1 == 2e-5
    assert parse_recipe({"prune": {"max_drop": 0.5}, "train": {"l1": 1e-4}}).train == {"l1": 1e-4}
    assert parse_recipe({"l1": 1e-4, "max_drop": 0.5}).train == {"l1": 1e-4}
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "lenet300", "--out", str(tmp_path / "x"), "--l1", "-1"])
    assert info.value.code == 2 and "--l1" in capsys.readouterr().err
    out = tmp_path / "base"
    assert main(["train", "--model", "lenet300", "--dataset", "digits", "--out", str(out), "--epochs", "1",
                 "--l1", "1e-4", "--weight-decay", "0", "--quiet"]) == 0
    assert json.loads((out / rundir.MODEL_META).read_text())["train"]["l1"] == 1e-4


def test_sweep_oneshot_without_retraining_is_pruning_alone_and_reports_test(trained_lenet300, small):
    make_train, _, _ = default_callables(small, TrainConfig(epochs=0))
    val = lambda m: evaluate(m, small, "val")  # noqa: E731
    test = lambda m: evaluate(m, small, "test")  # noqa: E731
    result = sweep(trained_lenet300, ["global-magnitude"], make_train=make_train, evaluate=val,
                   strengths=(1.0, 3.0), schedule="oneshot", test=test)
    iterative = sweep(trained_lenet300, ["global-magnitude"], make_train=make_train, evaluate=val,
                      strengths=(1.0, 3.0))
    points = result["methods"]["global-magnitude"]
    assert result["schedule"] == "oneshot" and "accuracy" in result["baseline"]["test"]
    assert [round(p["compression"], 1) for p in points] == [round(p["compression"], 1)
                                                           for p in iterative["methods"]["global-magnitude"]]
    assert all(0 <= p["test_accuracy"] <= 1 for p in points) and points[1]["compression"] > 7


def test_a_sweep_refuses_a_schedule_that_prunes_inside_training(capsys, tmp_path):
    with pytest.raises(ConfigError, match="gradual"):
        check_sweep(["han"], [1.0], "gradual")
    with pytest.raises(SystemExit):
        main(["sweep", "--model", "lenet300", "--out", str(tmp_path / "s"), "--schedule", "gradual"])
    assert "--schedule" in capsys.readouterr().err


def test_cli_sweep_oneshot_without_retraining_on_an_l1_baseline_reports_test(tmp_path):
    base, out = tmp_path / "base", tmp_path / "sweep"
    assert main(["train", "--model", "lenet300", "--dataset", "digits", "--out", str(base), "--epochs", "2",
                 "--l1", "1e-4", "--weight-decay", "0", "--quiet"]) == 0
    assert main(["sweep", "--from", str(base), "--dataset", "digits", "--out", str(out), "--methods",
                 "global-magnitude", "--strengths", "1,2", "--schedule", "oneshot", "--retrain-epochs", "0",
                 "--test", "--quiet"]) == 0
    result = json.loads((out / rundir.SWEEP).read_text())
    points = result["methods"]["global-magnitude"]
    assert result["schedule"] == "oneshot" and [p["strength"] for p in points] == [1.0, 2.0]
    assert all("test_accuracy" in p for p in points) and "reported only" in (out / "sweep.md").read_text()
