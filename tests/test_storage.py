"""Checkpoints (safetensors + JSON, no pickle) and atomic writes."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import secateur.io.storage as storage
from secateur.errors import CheckpointError, ConfigError
from secateur.io.storage import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_model,
    read_checkpoint,
    read_json,
    save_model,
)
from secateur.unstructured.masks import (
    apply_masks,
    effective,
    effective_state_dict,
    masks_of,
    prunable_names,
)


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def build(name: str, **args: object) -> nn.Module:
    assert name == "net"
    return Net(**args)


def _trained(seed: int = 0, masked: bool = True) -> Net:
    """A net with masks, nonzero BN statistics and a few SGD steps behind it."""
    torch.manual_seed(seed)
    model = Net()
    if masked:
        apply_masks(model, {n: torch.rand(effective(model, n).shape) < 0.4 for n in prunable_names(model)})
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _x() -> torch.Tensor:
    return torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))


META = {"model": {"name": "net", "args": {"width": 4}}, "note": {"nested": [1, 2]}}


def test_masked_round_trip_is_exact_and_masks_stay_enforced(tmp_path: Path) -> None:
    model = _trained()
    st, js = save_model(model, tmp_path / "run" / "model", META)
    assert st == tmp_path / "run" / "model.safetensors" and js.name == "model.json"
    header = json.loads(js.read_text())
    assert header["format"] == "secateur.checkpoint" and header["format_version"] == 1
    assert header["masks"] == ["conv.weight", "fc.weight"] and header["note"] == {"nested": [1, 2]}
    loaded, meta = load_model(tmp_path / "run" / "model.safetensors", build=build)
    loaded.eval()
    assert meta["model"] == META["model"]
    assert torch.equal(loaded(_x()), model(_x()))
    saved, back = effective_state_dict(model), effective_state_dict(loaded)
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    masks = masks_of(model)
    assert masks.keys() == masks_of(loaded).keys()
    assert all(torch.equal(masks[k], masks_of(loaded)[k]) for k in masks)
    opt = torch.optim.SGD(loaded.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    loaded.train()
    for _ in range(2):
        opt.zero_grad()
        loaded(_x()).square().sum().backward()
        opt.step()
    for name, keep in masks.items():
        assert (effective(loaded, name)[~keep] == 0).all()
        assert not torch.equal(effective(loaded, name)[keep], saved[name][keep])


def test_plain_model_round_trip_and_buffers(tmp_path: Path) -> None:
    model = _trained(masked=False)
    assert model.bn.num_batches_tracked.item() == 3
    save_model(model, tmp_path / "plain", META)
    target = Net()
    loaded, _ = load_model(tmp_path / "plain.json", target)
    assert loaded is target and masks_of(loaded) == {}
    assert torch.equal(loaded.bn.running_mean, model.bn.running_mean)
    assert torch.equal(loaded.bn.running_var, model.bn.running_var)
    assert loaded.bn.num_batches_tracked.item() == 3
    assert torch.equal(loaded.eval()(_x()), model(_x()))
    tensors, masks, meta = read_checkpoint(tmp_path / "plain")
    assert masks == {} and "bn.num_batches_tracked" in tensors and meta["tensors"] == len(tensors)


def test_loading_into_a_masked_template_replaces_its_masks(tmp_path: Path) -> None:
    model = _trained(seed=0)
    save_model(model, tmp_path / "model", META)
    template = _trained(seed=1)  # different weights and different masks
    loaded, _ = load_model(tmp_path / "model", template)
    assert all(torch.equal(masks_of(model)[k], v) for k, v in masks_of(loaded).items())
    assert torch.equal(loaded(_x()), model(_x()))


def test_tied_parameters_are_saved(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    save_model(model, tmp_path / "tied")
    tensors, _, _ = read_checkpoint(tmp_path / "tied")
    assert torch.equal(tensors["0.weight"], tensors["1.weight"])


def test_load_model_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained()
    save_model(model, tmp_path / "model", META)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling is forbidden")

    for target, attr in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, attr, forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    loaded, _ = load_model(tmp_path / "model", build=build)
    assert torch.equal(loaded.eval()(_x()), model(_x()))


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    atomic_write_json(target, {"b": 1, "a": {"c": [1, 2]}})
    atomic_write_json(target, {"b": 2, "a": {"c": [3]}})
    assert read_json(target) == {"a": {"c": [3]}, "b": 2}
    assert target.read_text().startswith('{\n  "a"')  # indent=2, sorted keys
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.json", "sub", "t.txt"]


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old contents")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_failed_save_does_not_clobber_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained()
    st, js = save_model(model, tmp_path / "model", META)
    before = (st.read_bytes(), js.read_bytes())
    with pytest.raises(ConfigError, match="not JSON serializable"):
        save_model(_trained(seed=5), tmp_path / "model", {"bad": object()})

    def exploding_save(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(storage.safetensors.torch, "save", exploding_save)
    with pytest.raises(RuntimeError):
        save_model(_trained(seed=5), tmp_path / "model", META)
    assert (st.read_bytes(), js.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


def _one_line_error(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path, Net())
    assert "\n" not in str(info.value)


def test_corrupt_truncated_and_mismatched_files_fail_in_one_line(tmp_path: Path) -> None:
    st, js = save_model(_trained(), tmp_path / "model", META)
    good = st.read_bytes()
    _one_line_error(tmp_path / "missing", "no checkpoint at")
    st.write_bytes(good[: len(good) // 2])
    _one_line_error(st, "corrupt or truncated.*re-save")
    st.write_bytes(b"\x00" * 3)
    _one_line_error(st, "corrupt or truncated")
    save_model(_trained(seed=9), tmp_path / "other", META)
    st.write_bytes((tmp_path / "other.safetensors").read_bytes())
    _one_line_error(st, "does not match model.json")
    st.write_bytes(good)
    js.write_text("{not json")
    _one_line_error(st, "not valid JSON")
    js.write_text(json.dumps({"format": "secateur.checkpoint"}))
    _one_line_error(st, "lacks format_version, masks, tensors")
    st.unlink()
    save_model(_trained(), tmp_path / "model", META)
    (tmp_path / "model.safetensors").unlink()
    _one_line_error(tmp_path / "model", "model.safetensors not found")


def test_wrong_architecture_and_missing_model_entry(tmp_path: Path) -> None:
    save_model(_trained(), tmp_path / "model", {"note": 1})
    with pytest.raises(CheckpointError, match=r"wrong shape conv\.weight.*saved from") as info:
        load_model(tmp_path / "model", Net(width=5))
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"missing 0.weight, 0.bias, 1.weight ... \(4\); "
                                              r"unexpected bn.bias, bn.num_batches_tracked, bn.running_mean ... \(9\)"):
        load_model(tmp_path / "model", nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match="no usable 'model' entry"):
        load_model(tmp_path / "model", build=build)


def test_read_json_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_json(tmp_path / "nope.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected an object"):
        read_json(tmp_path / "list.json")
    assert os.listdir(tmp_path) == ["list.json"]
