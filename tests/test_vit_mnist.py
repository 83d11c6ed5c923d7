"""``vit-mnist``: the zoo's small vision transformer builds, trains, is listed, and prunes by neurons."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secateur.app.cli import main
from secateur.errors import ConfigError
from secateur.search.orchestrator import prune
from secateur.structured import analyse
from secateur.train import TrainConfig, fit
from secateur.zoo.baseline import default_config
from secateur.zoo.models import MODELS, Attention, build_model


def test_vit_mnist_is_registered_listed_and_has_a_recipe(capsys):
    assert "vit-mnist" in MODELS.names()
    assert main(["list"]) == 0
    assert "vit-mnist" in capsys.readouterr().out
    recipe = default_config("vit-mnist")
    assert recipe.optimizer == "adamw" and recipe.validate() is recipe


def test_vit_mnist_builds_with_separate_qkv_and_runs():
    torch.manual_seed(0)
    model = build_model("vit-mnist")
    attn = model.blocks[0].attn
    assert isinstance(attn, Attention) and (attn.num_heads, attn.head_dim) == (4, 16)
    assert [type(getattr(attn, n)) for n in ("q", "k", "v", "proj")] == [nn.Linear] * 4
    assert len(model.blocks) == 4 and model.blocks[0].mlp.fc1.out_features == 128
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    small = build_model("vit-mnist", input_shape=(3, 32, 32), num_classes=5, patch=4, depth=2, heads=2)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 5) and len(small.blocks) == 2


def test_attention_is_scaled_dot_product_attention_over_its_heads():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x = torch.randn(2, 5, 16)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(2, 5, 4, 4).transpose(1, 2)

    expected = F.scaled_dot_product_attention(heads(attn.q(x)), heads(attn.k(x)), heads(attn.v(x)))
    expected = attn.proj(expected.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected)


def test_bad_vit_options_are_one_line_config_errors():
    for options in ({"dim": 30, "heads": 4}, {"patch": 40}, {"depth": 0}):
        with pytest.raises(ConfigError) as err:
            build_model("vit-mnist", **options)
        assert "\n" not in str(err.value) and "vit-mnist" in str(err.value)


def test_vit_mnist_trains(small):
    torch.manual_seed(0)
    model = build_model("vit-mnist")
    before = copy.deepcopy(model.state_dict())
    history = fit(model, small.subset(train=512, val=128, test=128), TrainConfig(
        epochs=2, batch_size=64, optimizer="adamw", lr=2e-3, weight_decay=0.05), progress=False)
    assert history.history[-1].loss < history.history[0].loss
    assert history.val_accuracy > 0.2  # well above chance (0.1) after 16 steps
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_vit_mnist_analysis_finds_its_mlp_neurons():
    graph = analyse(build_model("vit-mnist"), torch.zeros(1, 1, 28, 28))
    mlp = {f"blocks.{i}.mlp.fc1" for i in range(4)}
    assert mlp <= {g.name for g in graph.groups}
    assert all(g.size == 128 for g in graph.groups if g.name in mlp)


def test_vit_mnist_prunes_by_neurons_and_still_runs(small):
    torch.manual_seed(0)
    model = build_model("vit-mnist")
    data = small.subset(train=256, val=128, test=128)
    result = prune(model, data=data, train_config=TrainConfig(epochs=1, batch_size=64, optimizer="adamw", lr=1e-3),
                   granularity="neuron", max_drop=100.0, rounds=1, retrain_epochs=1, start=1.0, polish_epochs=0)
    channels = result.results["channels"]
    assert channels["blocks.0.mlp.fc1"] == {"before": 128, "after": 64}
    pruned = result.model
    assert pruned.blocks[3].mlp.fc1.out_features == 64 and pruned.blocks[3].mlp.fc2.in_features == 64
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert result.results["params"]["total"] < sum(p.numel() for p in build_model("vit-mnist").parameters())


def test_vit_mnist_heads_are_pruned_exactly_and_its_forward_follows():
    """The `qkv-proj` layout: whole heads (q / k / v rows, proj columns) go, `num_heads` follows."""
    from structured_helpers import assert_equivalent, equivalence

    torch.manual_seed(0)
    model = build_model("vit-mnist").eval()
    pruned, _, diff, scale = equivalence(model, torch.randn(3, 1, 28, 28), ratio=0.5)
    assert_equivalent(diff, scale)
    attn = pruned.blocks[0].attn
    assert attn.num_heads == 2 and attn.head_dim == 16
    assert attn.q.out_features == attn.k.out_features == attn.v.out_features == attn.proj.in_features == 32
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_the_search_prunes_vit_mnist_per_head_dimensions(small):
    """``attention="head-dims"`` reaches the search's pruner: heads stay, every head narrows."""
    torch.manual_seed(0)
    data = small.subset(train=256, val=128, test=128)
    result = prune(build_model("vit-mnist"), data=data, granularity="channel", attention="head-dims",
                   train_config=TrainConfig(epochs=1, batch_size=64, optimizer="adamw", lr=1e-3),
                   max_drop=100.0, rounds=1, retrain_epochs=1, start=1.0, polish_epochs=0, ignore=("patch_embed",))
    assert result.results["channels"]["blocks.0.attn.q"] == {"before": 64, "after": 32}
    attn = result.model.blocks[0].attn
    assert (attn.num_heads, attn.head_dim, attn.q.out_features) == (4, 8, 32)
    assert result.model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
