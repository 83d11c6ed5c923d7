"""Parameter, MAC and sparsity accounting, including masked (parametrized) weights."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn.utils import parametrize

from secateur.analysis.metrics import (
    LayerStats,
    SparsityRow,
    count_macs,
    count_params,
    file_bytes,
    format_layer_table,
    layer_stats,
    measure_latency,
    sparsity_report,
)
from secateur.errors import ConfigError
from secateur.zoo.models import build_model

MNIST = (1, 28, 28)


class Mask(nn.Module):
    """A minimal weight mask like masks.py's: multiplies by a fixed 0/1 buffer."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def test_lenet300_macs_and_layers():
    stats = layer_stats(build_model("lenet300"), MNIST)
    assert [s.name for s in stats] == ["fc1", "fc2", "fc3"]
    assert [s.macs for s in stats] == [235_200, 30_000, 1_000]
    assert [s.params for s in stats] == [235_500, 30_100, 1_010]
    assert stats[0].weight_shape == (300, 784) and stats[0].output_shape == (300,)
    assert count_macs(build_model("lenet300"), MNIST) == 266_200


def test_lenet5_macs_match_hand_computation():
    stats = {s.name: s for s in layer_stats(build_model("lenet5"), MNIST)}
    assert stats["conv1"].macs == 20 * 24 * 24 * 25
    assert stats["conv2"].macs == 50 * 8 * 8 * 20 * 25
    assert stats["fc1"].macs == 800 * 500 and stats["fc2"].macs == 5_000
    assert stats["conv2"].output_shape == (50, 8, 8) and stats["conv1"].kind == "Conv2d"
    assert count_macs(build_model("lenet5"), MNIST) == 2_293_000


def test_torchvision_reference_macs():
    resnet18 = build_model("torchvision:resnet18", num_classes=1000)
    assert count_params(resnet18) == 11_689_512
    assert count_macs(resnet18, (3, 224, 224)) == pytest.approx(1.814e9, rel=2e-3)
    mobilenet = build_model("torchvision:mobilenet_v2", num_classes=1000)  # depthwise (grouped) convs
    assert count_macs(mobilenet, (3, 224, 224)) == pytest.approx(300.8e6, rel=5e-3)


def test_conv_variants_and_norms_get_rows():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.LayerNorm(32),
                          nn.Unflatten(1, (4, 8)), nn.ConvTranspose1d(4, 2, 3, stride=2))
    stats = {s.name: s for s in layer_stats(model, (2, 10))}
    assert set(stats) == {"0", "1", "3", "5"}
    assert stats["0"].macs == 4 * 8 * (2 * 3)
    assert stats["1"].kind == "BatchNorm1d" and stats["1"].params == 8 and stats["1"].macs == 0
    assert stats["3"].params == 64
    assert stats["5"].macs == (4 * 8) * (2 * 3) and stats["5"].output_shape == (2, 17)
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_grouped_conv_and_linear_over_positions():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    assert count_macs(conv, (8, 5, 5)) == 8 * 5 * 5 * (2 * 9)
    linear = nn.Linear(6, 4)  # applied to every one of 5 positions
    assert count_macs(linear, (5, 6)) == 5 * 6 * 4


def test_nonzero_macs_drop_with_zeroed_weights():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight[:, :5] = 0  # half of fc1
    dense, sparse = count_macs(model, (10,)), count_macs(model, (10,), nonzero=True)
    assert dense == 80 + 16 and sparse == 40 + 16
    positions = nn.Linear(6, 4)
    with torch.no_grad():
        positions.weight[:2] = 0
    assert count_macs(positions, (5, 6), nonzero=True) == count_macs(positions, (5, 6)) // 2
    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        conv.weight[0] = 0
    stats = layer_stats(conv, (1, 6, 6))[0]
    assert stats.macs == 2 * 16 * 9 and stats.macs_nonzero == 9 * 16
    assert stats.weights_nonzero == 9 and stats.params_nonzero == 11


def test_sparsity_report_counts_known_zeros():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0, 2], [0, 0, 0, 0], [3, 0, 4, 0]]))
        model[0].bias.copy_(torch.tensor([0.0, 1, 0]))
        model[1].weight.fill_(1.0)
    report = sparsity_report(model)
    first, second = report["layers"]
    assert first["name"] == "0" and first["weights"] == {"total": 12, "nonzero": 4, "sparsity": pytest.approx(8 / 12)}
    assert first["biases"] == {"total": 3, "nonzero": 1, "sparsity": pytest.approx(2 / 3)}
    assert second["weights"]["nonzero"] == 6 and second["biases"]["total"] == 0
    overall = report["overall"]
    assert (overall["total"], overall["nonzero"]) == (21, 11)
    assert overall["sparsity"] == pytest.approx(10 / 21)
    assert overall["weights"]["total"] == 18 and overall["biases"]["nonzero"] == 1
    assert count_params(model, nonzero=True) == 11


def test_sparsity_row():
    row = SparsityRow("fc1", 200, 50)
    assert row.sparsity == pytest.approx(0.75) and row.kept == pytest.approx(0.25)
    assert SparsityRow("empty", 0, 0).sparsity == 0.0


def masked_lenet300() -> nn.Module:
    """lenet300 with fc1 masked to keep 1 column in 4, through torch's parametrize."""
    model = build_model("lenet300")
    mask = torch.zeros(300, 784)
    mask[:, ::4] = 1
    parametrize.register_parametrization(model.fc1, "weight", Mask(mask))
    return model


def test_masked_modules_are_counted_from_effective_weights():
    model = masked_lenet300()
    stats = layer_stats(model, MNIST)
    assert [s.name for s in stats] == ["fc1", "fc2", "fc3"]  # no "fc1.parametrizations..." rows
    fc1 = stats[0]
    assert fc1.kind == "Linear" and fc1.weight_shape == (300, 784)
    assert fc1.weights == 235_200 and fc1.weights_nonzero == 300 * 196
    assert fc1.params == 235_500 and fc1.macs == 235_200 and fc1.macs_nonzero == 300 * 196
    assert count_params(model) == 266_610
    assert count_params(model, nonzero=True) == 266_610 - 235_200 + 300 * 196
    assert count_macs(model, MNIST, nonzero=True) == 300 * 196 + 30_000 + 1_000
    report = sparsity_report(model)
    assert report["layers"][0]["weights"]["sparsity"] == pytest.approx(0.75)
    assert [row["name"] for row in report["layers"]] == ["fc1", "fc2", "fc3"]


def test_masked_bias_is_counted_as_bias():
    layer = nn.Linear(4, 4)
    parametrize.register_parametrization(layer, "bias", Mask(torch.tensor([1.0, 0, 0, 1])))
    stats = layer_stats(layer, (4,))[0]
    assert (stats.weights, stats.biases, stats.biases_nonzero) == (16, 4, 2)


def test_layer_stats_restores_training_mode_and_rejects_bad_shapes():
    model = build_model("vgg-mnist")
    model.train()
    running = model.features.bn1.running_mean.clone()
    layer_stats(model, MNIST)
    assert all(m.training for m in model.modules())
    assert torch.equal(model.features.bn1.running_mean, running)
    with pytest.raises(ConfigError) as err:
        layer_stats(build_model("lenet300"), (1, 8, 8))
    assert "\n" not in str(err.value) and "1,8,8" in str(err.value)


def test_format_layer_table_lists_every_layer():
    stats = layer_stats(build_model("lenet5"), MNIST)
    console = Console(width=200, record=True)
    console.print(format_layer_table(stats))
    text = console.export_text()
    for name in ("conv1", "conv2", "fc1", "fc2"):
        assert name in text
    assert "431,080" in text and "2,293,000" in text and "20x1x5x5" in text
    assert isinstance(stats[0], LayerStats)


def test_file_bytes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 23)
    assert file_bytes(tmp_path / "a.bin") == 100
    assert file_bytes(tmp_path) == 123
    with pytest.raises(ConfigError):
        file_bytes(tmp_path / "missing")


def test_measure_latency_returns_positive_median_and_keeps_mode():
    model = build_model("lenet300")
    model.train()
    seconds = measure_latency(model, MNIST, batch_size=4, repeats=3, warmup=1)
    assert 0 < seconds < 1.0
    assert model.training
    with pytest.raises(ConfigError):
        measure_latency(model, MNIST, repeats=0)
