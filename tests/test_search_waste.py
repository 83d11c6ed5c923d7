"""The final smooth ramp (``ramp_epochs``): kept only when it passes the rule and is no worse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import secateur.search.orchestrator as orchestrator
from secateur import PruneConfig, prune
from secateur.errors import ConfigError
from secateur.search.session import PruningSession
from secateur.train import TrainConfig, fit
from secateur.zoo.loaders import Loaders

RECIPE = TrainConfig(epochs=4, batch_size=32, lr=0.1)


def _data() -> Loaders:
    """Two separable blobs in 20 dimensions: a tiny MLP learns them in a few steps."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (320,), generator=g)
    x = torch.randn(320, 20, generator=g) + 0.4 * y[:, None].float()
    return Loaders(train=TensorDataset(x[:192], y[:192]), val=TensorDataset(x[192:256], y[192:256]),
                   test=TensorDataset(x[256:], y[256:]), num_classes=2)


def _model() -> nn.Module:
    """The tiny MLP, trained (the dense baseline the search starts from)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))
    fit(model, _data(), RECIPE, progress=False)
    return model


def _run(ramp_epochs: int, max_drop: float = 5.0) -> dict:
    result = prune(_model(), data=_data(), train_config=RECIPE, input_shape=(20,), max_drop=max_drop, rounds=3,
                   retrain_epochs=1, polish_epochs=1, ramp_epochs=ramp_epochs)
    return {"results": result.results, "model": result.model}


def test_no_ramp_by_default() -> None:
    assert _run(0)["results"]["ramp"] is None


@pytest.mark.parametrize("chosen_val", [-1.0, 2.0], ids=["any-ramp-is-better", "no-ramp-can-be"])
def test_ramp_is_kept_only_if_no_worse(chosen_val: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the chosen model is beaten by anything (-1) or by nothing (2.0 > any accuracy)."""
    real = orchestrator._chosen_stats

    def stats(run: orchestrator.Run) -> dict:
        measured = real(run)
        return {"val_accuracy": chosen_val, "params_nonzero": measured["params_nonzero"] * (4 if chosen_val < 0 else 1)}

    monkeypatch.setattr(orchestrator, "_chosen_stats", stats)
    out = _run(2, max_drop=100.0)  # every model is within the bound: only "no worse" decides
    ramp, results = out["results"]["ramp"], out["results"]
    assert ramp is not None and ramp["epochs"] == 2 and ramp["strength"] > 0
    assert ramp["kept"] == (chosen_val < 0)
    if ramp["kept"]:  # the ramp's model is the answer, and the results say so
        assert results["params"]["nonzero"] == ramp["params_nonzero_after"]
        assert results["pruned"]["val"]["accuracy"] == ramp["val_accuracy_after"]
    else:  # the chosen (polished) model stays the answer
        assert results["params"]["nonzero"] == ramp["params_nonzero_before"]
        assert results["pruned"]["val"]["accuracy"] == results["polish"]["val_accuracy_after"]


def test_ramp_without_monkeypatching_never_makes_things_worse() -> None:
    out = _run(2)
    ramp = out["results"]["ramp"]
    assert 0 < ramp["params_nonzero_after"] < 20 * 32 + 32 * 2 and ramp["params_nonzero_before"] > 0
    if ramp["kept"]:
        assert ramp["val_accuracy_after"] >= ramp["val_accuracy_before"]
        assert ramp["params_nonzero_after"] <= ramp["params_nonzero_before"]
        assert ramp["drop"] + ramp["margin"] <= 5.0
        assert out["results"]["params"]["nonzero"] == ramp["params_nonzero_after"]
    else:
        assert out["results"]["params"]["nonzero"] == ramp["params_nonzero_before"]


def test_ramp_is_refused_where_it_cannot_run() -> None:
    with pytest.raises(ConfigError, match="ramp epochs"):
        PruneConfig(granularity="channel", ramp_epochs=2).validate()
    with pytest.raises(ConfigError, match="ramp_epochs"):
        PruningSession(_model(), lambda m: 1.0, ramp_epochs=2)
    with pytest.raises(ConfigError, match="ramp epochs must be"):
        PruneConfig(ramp_epochs=-1).validate()


def test_the_report_says_what_the_ramp_did(tmp_path: Path) -> None:
    prune(_model(), data=_data(), train_config=RECIPE, input_shape=(20,), max_drop=5.0, rounds=2,
          retrain_epochs=1, polish_epochs=0, ramp_epochs=1, out=tmp_path / "run")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "final ramp" in report and "1 epochs from the dense model" in report


def test_a_kept_ramp_is_the_model_certification_judges_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ramp runs before certification, so a kept ramp is the final candidate certified."""
    real = orchestrator._chosen_stats
    monkeypatch.setattr(orchestrator, "_chosen_stats", lambda run: {
        "val_accuracy": -1.0, "params_nonzero": 4 * real(run)["params_nonzero"]})
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (64,), generator=g)
    x = torch.randn(64, 20, generator=g) + 0.4 * y[:, None].float()

    def held_out(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(x).argmax(1) == y

    baseline = _model()
    result = prune(baseline, data=_data(), train_config=RECIPE, input_shape=(20,), max_drop=100.0, rounds=3,
                   retrain_epochs=1, polish_epochs=1, ramp_epochs=2, certify_evaluate=held_out)
    returned_drop = 100 * (held_out(baseline).float().mean() - held_out(result.model).float().mean()).item()
    # the returned model is the one certified
    assert result.results["certification"]["drop"] == pytest.approx(returned_drop, abs=1e-6)
    ramp, certified = result.results["ramp"], result.results["certification"]
    assert ramp["kept"] and certified["candidates"][0]["certified"]
    assert result.results["params"]["nonzero"] == ramp["params_nonzero_after"]
    assert result.results["pruned"]["val"]["accuracy"] == ramp["val_accuracy_after"]
    # the first candidate reports the ramp's own compression, not the search round's
    total = sum(p.numel() for p in baseline.parameters())
    assert certified["candidates"][0]["compression"] == pytest.approx(total / ramp["params_nonzero_after"])
