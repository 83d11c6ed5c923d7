"""Exports (secateur.export): the registry, the dense format, and the command line."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from secateur.app.cli import main
from secateur.errors import ConfigError
from secateur.export import EXPORT_FORMATS, export_model
from secateur.io.storage import save_model
from secateur.unstructured.masks import apply_masks
from secateur.zoo.models import build_model


def _masked_lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet300")
    apply_masks(model, {"fc1.weight": torch.rand(300, 784) > 0.9})
    return model


def test_dense_export_folds_masks_into_a_plain_state_dict(tmp_path):
    model = _masked_lenet()
    done = export_model(model, tmp_path / "dense.safetensors")
    plain = safetensors.torch.load_file(done.path)
    assert "fc1.weight" in plain and not any("mask" in key or "parametrizations" in key for key in plain)
    fresh = build_model("lenet300")
    fresh.load_state_dict(plain)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(fresh.eval()(x), model.eval()(x))
    assert done.bytes == done.path.stat().st_size


def test_export_never_overwrites_without_force(tmp_path):
    out = tmp_path / "mine.bin"
    out.write_bytes(b"the user's file")
    with pytest.raises(ConfigError, match="exists"):
        export_model(_masked_lenet(), out)
    assert out.read_bytes() == b"the user's file"
    export_model(_masked_lenet(), out, force=True)
    assert out.read_bytes() != b"the user's file"


def test_unknown_option_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="takes no option"):
        export_model(_masked_lenet(), tmp_path / "x", "dense", bits=5)


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    save_model(_masked_lenet(), tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt.safetensors"), "--out", str(tmp_path / "d.safetensors")]) == 0
    assert "bytes" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "ckpt.safetensors"), "--out", str(tmp_path / "d.safetensors")]) == 2
    assert "exists" in capsys.readouterr().err


def test_every_format_is_listed():
    assert "dense" in EXPORT_FORMATS.names()


def test_an_out_that_is_not_a_path_is_one_line_naming_a_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^out= must be the path of the file to write"):
        export_model(_masked_lenet(), 5)
