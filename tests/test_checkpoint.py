"""One checkpoint format for every model: dense, masked and structurally pruned models saved with
``save_model(model, path)`` come back from ``load_model(path)`` alone, equal and in eval mode."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from secateur.errors import CheckpointError, ConfigError
from secateur.io.storage import (
    KEY_FORMAT,
    KEY_FORMAT_VERSION,
    KEY_MASKS,
    KEY_MODEL,
    KEY_PLAN,
    KEY_SHA256,
    KEY_TENSORS,
    KEY_VERSIONS,
    load_model,
    save_model,
)
from secateur.provenance import recorded_model, recorded_plan
from secateur.structured import Plan, compose, current_plan, prune_channels
from secateur.structured.plan import relative
from secateur.unstructured.masks import apply_masks, effective, masks_of, prunable_names
from secateur.zoo.models import build_model, model_record

MNIST = (1, 28, 28)


def _x(shape: tuple[int, ...] = MNIST, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


def _round_trip(model: nn.Module, x: torch.Tensor, path: Path) -> tuple[nn.Module, dict]:
    """Save with no meta, load with no template; the outputs must be equal, in eval mode."""
    save_model(model, path)
    loaded, meta = load_model(path)
    assert not any(m.training for m in loaded.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    return loaded, meta


def test_dense_lenet5_rebuilds_from_its_header(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5")
    _, meta = _round_trip(model, _x(), tmp_path / "dense")
    assert meta[KEY_MODEL] == model_record("lenet5", MNIST, 10)
    assert meta[KEY_FORMAT] == "secateur.checkpoint" and meta[KEY_FORMAT_VERSION] == 1
    assert meta[KEY_MASKS] == [] and KEY_PLAN not in meta and meta[KEY_TENSORS] == 8
    assert set(meta[KEY_VERSIONS]) >= {"secateur", "torch"} and len(meta[KEY_SHA256]) == 64


def test_masked_lenet300_keeps_its_masks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("lenet300")
    masks = {n: torch.rand(effective(model, n).shape) < 0.3 for n in prunable_names(model)}
    apply_masks(model, masks)
    loaded, meta = _round_trip(model, _x(), tmp_path / "masked")
    assert meta[KEY_MASKS] == sorted(masks)
    assert all(torch.equal(masks_of(loaded)[n], masks[n]) for n in masks)


def test_channel_pruned_lenet5_rebuilds_from_factory_and_plan(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, plan = prune_channels(build_model("lenet5"), _x()[:1], ratio=0.5)
    loaded, meta = _round_trip(model, _x(), tmp_path / "pruned")
    assert meta[KEY_PLAN] == plan.to_json() and recorded_plan(loaded) == plan.to_json()
    assert loaded.conv1.out_channels == 10 and loaded.fc1.out_features == 250


def test_twice_pruned_lenet5_carries_the_composed_plan(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, first = prune_channels(build_model("lenet5"), _x()[:1], ratio=0.5)
    model, second = prune_channels(model, _x()[:1], ratio=0.5)
    loaded, meta = _round_trip(model, _x(), tmp_path / "twice")
    assert meta[KEY_PLAN] == compose(first, second).to_json()
    assert loaded.conv1.out_channels == model.conv1.out_channels == 5


def test_torchvision_resnet18_pruned_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", input_shape=(3, 32, 32), num_classes=10)
    x = _x((3, 32, 32), n=2)
    model(x)  # train mode: the BatchNorm running statistics move away from their defaults
    prune_channels(model, x[:1], ratio=0.5)
    loaded, meta = _round_trip(model, x, tmp_path / "r18")
    assert meta[KEY_MODEL]["name"] == "torchvision:resnet18"
    assert loaded.fc.in_features == model.fc.in_features < 512


def test_masked_and_pruned_model_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = prune_channels(build_model("lenet5"), _x()[:1], ratio=0.5)
    apply_masks(model, {n: torch.rand(effective(model, n).shape) < 0.5 for n in prunable_names(model)})
    loaded, meta = _round_trip(model, _x(), tmp_path / "both")
    assert meta[KEY_PLAN] is not None and masks_of(loaded).keys() == masks_of(model).keys()


def test_record_and_plan_survive_deepcopy_and_resaving(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, plan = prune_channels(build_model("lenet5"), _x()[:1], ratio=0.5)
    twin = copy.deepcopy(model)
    assert recorded_model(twin) == recorded_model(model) and recorded_plan(twin) == plan.to_json()
    loaded, _ = _round_trip(twin, _x(), tmp_path / "a")
    again, meta = _round_trip(loaded, _x(), tmp_path / "b")  # a loaded model saves as it came
    assert meta[KEY_PLAN] == plan.to_json() and recorded_model(again) == recorded_model(model)


def test_loads_into_a_template_pruned_part_of_the_way(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = build_model("lenet5")
    once, _ = prune_channels(copy.deepcopy(dense), _x()[:1], ratio=0.5)
    twice, _ = prune_channels(copy.deepcopy(once), _x()[:1], ratio=0.5)
    save_model(twice, tmp_path / "twice")
    for template in (copy.deepcopy(dense), copy.deepcopy(once), copy.deepcopy(twice)):
        loaded, _ = load_model(tmp_path / "twice", template)
        assert loaded is template and recorded_plan(loaded) == recorded_plan(twice)
        assert torch.equal(loaded(_x()), twice.eval()(_x()))


def test_explicit_meta_plan_and_model_are_kept(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, plan = prune_channels(build_model("lenet5"), _x()[:1], ratio=0.5)
    record = model_record("lenet5", MNIST, 10)
    for meta in ({KEY_PLAN: plan}, {KEY_PLAN: plan.to_json(), KEY_MODEL: record}):
        save_model(model, tmp_path / "explicit", meta)
        header = json.loads((tmp_path / "explicit.json").read_text())
        assert header[KEY_PLAN] == plan.to_json() and header[KEY_MODEL] == record
        loaded, _ = load_model(tmp_path / "explicit")
        assert torch.equal(loaded(_x()), model.eval()(_x()))


def test_unknown_plan_format_and_unbuildable_models_fail_in_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = prune_channels(build_model("lenet5"), _x()[:1], ratio=0.5)
    save_model(model, tmp_path / "odd", {KEY_PLAN: {"format": "someone-else/9"}})
    with pytest.raises(CheckpointError, match="someone-else/9"):
        load_model(tmp_path / "odd")
    plain = nn.Sequential(nn.Linear(3, 2))  # not built by secateur: no record to rebuild it from
    save_model(plain, tmp_path / "plain")
    with pytest.raises(CheckpointError, match="model="):
        load_model(tmp_path / "plain")
    assert torch.equal(load_model(tmp_path / "plain", nn.Sequential(nn.Linear(3, 2)))[0][0].weight, plain[0].weight)


def test_relative_plan_inverts_compose_and_refuses_regrowth() -> None:
    first = Plan(keep_out={"a": [0, 2, 3, 5]}, keep_in={"b": [0, 2, 3, 5]})
    second = Plan(keep_out={"a": [1, 3], "c": [0]}, keep_in={"b": [1, 3]})
    total = compose(first, second)
    step = relative(total, first)
    assert compose(first, step).keep_out == total.keep_out and compose(first, step).keep_in == total.keep_in
    assert relative(first, first).keep_out == {} and current_plan(nn.Linear(2, 2)) == Plan()
    with pytest.raises(ConfigError, match="already"):
        relative(first, total)


def test_storage_does_not_import_structured_pruning() -> None:
    """io sits below structured: plan formats are registered with it, never imported by it."""
    source = (Path(__file__).resolve().parents[1] / "src" / "secateur" / "io" / "storage.py").read_text()
    modules = [n.module or "" for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m.startswith("secateur.structured")]
