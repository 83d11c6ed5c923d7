"""The compact export (secateur.export.compact): encodings, codecs, container, weight sharing."""

from __future__ import annotations

import pickle
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secateur.app.cli import main
from secateur.errors import CheckpointError, ConfigError
from secateur.export import export_model, huffman
from secateur.export.codebook import cluster, kmeans_1d, parse_bits, share_weights, weight_bits
from secateur.export.compact import MAGIC, encode_model, read_compact
from secateur.export.entropy import CODECS, available_codecs
from secateur.export.sparse_encodings import PATTERN_ENCODINGS, gap_symbols, positions_from_gaps
from secateur.io.storage import load_model, save_model
from secateur.structured import prune_channels
from secateur.train import TrainConfig, fit
from secateur.unstructured.masks import apply_masks, effective_state_dict, masks_of
from secateur.zoo.data import load_dataset
from secateur.zoo.models import build_model

X = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _masked(name: str, density: float = 0.1, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name)
    masks = {n: torch.rand(p.shape) < density for n, p in model.named_parameters() if n.endswith("weight")}
    apply_masks(model, masks)
    return model.eval()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _same_bits(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Equal down to the bit pattern (``-0.0`` and NaN payloads included)."""
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k].view(torch.uint8) if sa[k].dtype.is_floating_point else sa[k],
                           sb[k].view(torch.uint8) if sb[k].dtype.is_floating_point else sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("codec", ["none", "zlib"])
def test_fp32_round_trip_through_load_model_is_bit_exact(tmp_path, name, codec):
    model = _masked(name)
    done = export_model(model, tmp_path / "m.compact", "compact", codec=codec)
    loaded, meta = load_model(done.path)
    assert _same_bits(model, loaded) and sorted(masks_of(loaded)) == sorted(masks_of(model))
    assert all(torch.equal(masks_of(loaded)[k], v) for k, v in masks_of(model).items())
    assert torch.equal(loaded(X), model(X))
    assert meta["format"] == "secateur.compact" and done.bytes == done.path.stat().st_size


def test_structurally_pruned_model_round_trips(tmp_path):
    torch.manual_seed(0)
    model, _ = prune_channels(build_model("lenet5").eval(), X[:1], 0.5)
    export_model(model, tmp_path / "s.compact", "compact")
    loaded, meta = load_model(tmp_path / "s.compact")
    assert meta["plan"] is not None and _same(model, loaded)
    assert torch.equal(loaded(X), model.eval()(X))


def test_compact_file_of_a_90_percent_sparse_lenet300_is_within_1_15x_its_nonzero_bytes(tmp_path):
    model = _masked("lenet300", density=0.1)
    nonzero = sum(int(m.sum()) for m in masks_of(model).values())
    dense_rest = sum(p.numel() for n, p in model.state_dict().items() if "weight" not in n)
    done = export_model(model, tmp_path / "m.compact", "compact")  # default codec: lzma, fp32 values
    assert done.bytes <= 1.15 * 4 * (nonzero + dense_rest) + 2048


def test_special_values_keep_their_bits(tmp_path):
    model = _masked("lenet300", density=0.5)
    with torch.no_grad():
        original = model.fc1.parametrizations.weight.original
        kept = masks_of(model)["fc1.weight"].nonzero()
        for (row, col), value in zip(kept[:3].tolist(), (-0.0, float("nan"), float("inf")), strict=True):
            original[row, col] = value
    for codec in ("none", "lzma"):
        data, _ = encode_model(model, codec_name=codec)
        (tmp_path / codec).write_bytes(data)
        loaded, _ = load_model(tmp_path / codec)
        assert _same_bits(model, loaded)


def test_a_codebook_never_merges_minus_zero_into_zero(tmp_path):
    shared, _ = share_weights(_masked("lenet300", density=0.2), "fc:3")
    with torch.no_grad():
        row, col = masks_of(shared)["fc1.weight"].nonzero()[0].tolist()
        shared.fc1.parametrizations.weight.original[row, col] = -0.0
        row, col = masks_of(shared)["fc1.weight"].nonzero()[1].tolist()
        shared.fc1.parametrizations.weight.original[row, col] = 0.0
    data, header = encode_model(shared, codec_name="none")
    (tmp_path / "z").write_bytes(data)
    assert _same_bits(shared, load_model(tmp_path / "z")[0])
    kinds = {t["name"]: t["values"]["kind"] for t in header["tensors"]}
    assert kinds["fc2.weight"] == kinds["fc1.weight"] == "codebook"


# ------------------------------------------------------------------------------------------------ encodings


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16), packed=st.booleans())
def test_every_encoding_round_trips(shape, density, seed, packed):
    mask = np.random.default_rng(seed).random(int(np.prod(shape))) < density
    for name in PATTERN_ENCODINGS.names():
        spec = PATTERN_ENCODINGS.get(name)
        for params, sections in spec.candidates(mask, tuple(shape), packed):
            assert np.array_equal(spec.decode(sections, params, tuple(shape), packed), mask), (name, params)


@settings(max_examples=40, deadline=None)
@given(gaps=st.lists(st.integers(0, 600), max_size=50), bits=st.integers(2, 8))
def test_relative_indices_bridge_long_gaps_with_escapes(gaps, bits):
    positions = np.cumsum(np.array(gaps, dtype=np.int64) + 1) - 1
    mask = np.zeros(int(positions[-1]) + 1 if gaps else 1, dtype=bool)
    mask[positions] = True
    symbols = gap_symbols(mask, bits)
    assert symbols.max(initial=0) < 2**bits
    assert np.array_equal(positions_from_gaps(symbols, bits), positions)


def test_automatic_choice_is_the_smallest_and_is_recorded():
    model = _masked("lenet300", density=0.1)
    _, header = encode_model(model, codec_name="none")
    entry = next(t for t in header["tensors"] if t["name"] == "fc1.weight")
    mask = masks_of(model)["fc1.weight"].reshape(-1).numpy()
    sizes = {(name, params.get("bits")): sum(len(s) for s in sections.values())
             for name in PATTERN_ENCODINGS.names()
             for params, sections in PATTERN_ENCODINGS.get(name).candidates(mask, (300, 784), True)}
    chosen = sum(header["sections"][i][1] for i in entry["mask"]["sections"].values())
    assert chosen == min(sizes.values())
    assert (entry["mask"]["encoding"], entry["mask"].get("bits")) in sizes
    dense = _masked("lenet300", density=0.9)  # nearly dense: one bit per entry beats any index
    _, header = encode_model(dense, codec_name="none")
    assert next(t for t in header["tensors"] if t["name"] == "fc1.weight")["mask"]["encoding"] == "bitmask"


@pytest.mark.parametrize("codec", available_codecs())
def test_every_available_codec_round_trips(codec):
    data = bytes(np.random.default_rng(0).integers(0, 4, 5000, dtype=np.uint8))
    spec = CODECS.get(codec)
    assert spec.decompress(spec.compress(data), len(data)) == data


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=3000), skew=st.integers(1, 8))
def test_huffman_round_trips_and_codes_a_skewed_stream_in_fewer_bits(data, skew):
    skewed = bytes(b >> skew for b in data)  # few distinct values: fewer bits than a byte each
    for stream in (data, skewed):
        assert huffman.decompress(huffman.compress(stream), len(stream)) == stream
    if len(skewed) > 1000 and skew >= 4:
        assert len(huffman.compress(skewed)) < 0.8 * len(skewed)


# ------------------------------------------------------------------------------------------------ the container


def test_corrupt_or_truncated_files_are_one_line_errors(tmp_path):
    data, _ = encode_model(_masked("lenet300"), codec_name="zlib")
    cases = {"truncated": data[: len(data) // 2], "header": data[:30] + bytes([data[30] ^ 1]) + data[31:],
             "payload": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:], "empty": MAGIC[:5]}
    for label, broken in cases.items():
        path = tmp_path / f"{label}.compact"
        path.write_bytes(broken)
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value), label


def test_a_forged_header_with_valid_checksums_is_refused(tmp_path):
    data, header = encode_model(_masked("lenet300"), codec_name="none")
    header["tensors"][0]["values"]["count"] += 1
    import hashlib
    import json
    import struct
    text = zlib.compress(json.dumps(header).encode())
    body = data[len(MAGIC) + 8 + struct.unpack_from("<I", data, len(MAGIC))[0]:]
    assert hashlib.sha256(body).hexdigest() == header["payload_sha256"]
    (tmp_path / "f.compact").write_bytes(MAGIC + struct.pack("<II", len(text), zlib.crc32(text)) + text + body)
    with pytest.raises(CheckpointError, match="not a readable compact file"):
        read_compact(tmp_path / "f.compact")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    export_model(_masked("lenet5"), tmp_path / "m.compact", "compact", codec="zlib")

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_model(tmp_path / "m.compact")


def test_fp16_values_are_half_the_size_and_close(tmp_path):
    model = _masked("lenet300", density=0.3)
    full = export_model(model, tmp_path / "a", "compact", codec="none")
    half = export_model(model, tmp_path / "b", "compact", codec="none", values="fp16")
    assert half.bytes < 0.7 * full.bytes
    loaded, _ = load_model(half.path)
    torch.testing.assert_close(loaded(X), model(X), atol=1e-2, rtol=1e-2)
    assert all(torch.equal(masks_of(loaded)[k], v) for k, v in masks_of(model).items())
    with pytest.raises(ConfigError, match="values"):
        export_model(model, tmp_path / "c", "compact", values="fp8")


# ------------------------------------------------------------------------------------------------ weight sharing


def test_kmeans_starts_linear_and_keeps_the_extremes():
    values = torch.cat([torch.randn(1000) * 0.01, torch.tensor([1.0, -1.0])])
    centroids, codes = kmeans_1d(values, 4)
    assert centroids.numel() == 4 and float(centroids.max()) == 1.0 and float(centroids.min()) == -1.0
    assert codes.max() < 4


def test_codebook_has_at_most_2_to_the_b_values_and_pruned_entries_stay_zero(tmp_path):
    model = _masked("lenet5", density=0.2)
    shared, facts = share_weights(model, "conv:3,fc:2")
    assert facts["bits"]["conv1.weight"] == 3 and facts["bits"]["fc1.weight"] == 2
    for name, mask in masks_of(model).items():
        weight = effective_state_dict(shared)[name]
        assert torch.unique(weight[mask]).numel() <= 2 ** facts["bits"][name]
        assert torch.all(weight[~mask] == 0)
    assert torch.equal(masks_of(shared)["fc1.weight"], masks_of(model)["fc1.weight"])
    plain = export_model(model, tmp_path / "p", "compact", codec="none")
    done = export_model(model, tmp_path / "s", "compact", codec="none", bits="conv:3,fc:2")
    assert done.bytes < 0.25 * plain.bytes
    loaded, _ = load_model(done.path)
    assert _same_bits(shared, loaded)


def test_bits_parse_and_name_errors():
    assert parse_bits("5") == {"*": 5} and parse_bits("conv:8,fc:5") == {"conv": 8, "fc": 5}
    with pytest.raises(ValueError, match="2 to 8"):
        parse_bits("9")
    with pytest.raises(ConfigError, match="neither a layer kind"):
        weight_bits(build_model("lenet300"), {"rnn": 4})


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    model = _masked("lenet300", density=0.3)
    shares = cluster(model, {"fc2.weight": 3})
    model(X).sum().backward()
    share = shares[0]
    grad = model.fc2.parametrizations.weight.original.grad.reshape(-1)[share.keep]
    expected = torch.stack([grad[share.codes == k].sum() for k in range(share.centroids.numel())])
    torch.testing.assert_close(share.centroid_grad(), expected)


@pytest.fixture(scope="module")
def tiny():
    data = load_dataset("mnist").subset(train=600, val=300, test=300)
    torch.manual_seed(0)
    model = build_model("lenet300")
    fit(model, data, TrainConfig(epochs=2, lr=0.01, batch_size=64), progress=False)
    apply_masks(model, {"fc1.weight": model.fc1.weight.abs() > model.fc1.weight.abs().quantile(0.8)})
    return data, model.eval()


def test_acceptance_refuses_a_codebook_that_breaks_the_bound(tiny):
    data, model = tiny
    with pytest.raises(ConfigError, match="breaks the drop bound"):
        share_weights(model, 2, data=data, epochs=0, max_drop=-50.0, baseline=model)
    _, facts = share_weights(model, 8, data=data, epochs=1, max_drop=5.0, baseline=model)
    assert facts["accepted"] and facts["epochs"] == 1 and facts["drop"] <= 5.0 + 1e-9


def test_cli_exports_a_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_model(_masked("lenet300"), run / "model")
    assert main(["export", str(run), "--format", "compact", "--out", str(tmp_path / "f.compact")]) == 0
    assert "bytes" in capsys.readouterr().out
    loaded, _ = load_model(tmp_path / "f.compact")
    assert _same(loaded, _masked("lenet300"))
    assert main(["export", str(tmp_path / "f.compact"), "--out", str(tmp_path / "d.safetensors")]) == 0
    assert main(["export", str(run), "--format", "compact", "--out", str(tmp_path / "g"),
                 "--option", "bits=99"]) == 2
    assert "bits" in capsys.readouterr().err
