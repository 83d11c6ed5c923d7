"""``compact`` export: a masked model in the fewest bytes, read back by ``secateur.load_model``.

The file is ``MAGIC``, then ``<u32 header length, u32 header crc32>``, the header (JSON,
deflated) and the payload: byte sections, each entropy-coded on its own
(:mod:`secateur.export.entropy`). The header holds the format version, what rebuilds the model
(the checkpoint header's model record and structured plan), and per tensor its name, shape,
dtype and crc32, how its sparsity pattern is stored and how its values are; the payload's
sha256 closes it. Per masked tensor the pattern takes the smallest of the registered encodings
(:mod:`secateur.export.sparse_encodings`: bitmask, CSR, Han's relative indexing), measured after
entropy coding and recorded; unmasked tensors (biases, batch norm) are stored whole.

Values are stored in the tensor's dtype (fp32: bit-exact), or as ``values=fp16`` / ``bf16``.
A tensor with at most 256 distinct (kept) bit patterns is stored, when smaller, as a codebook of
those values plus a ``ceil(log2 k)``-bit code per entry: lossless, so a model whose weights
were shared (:mod:`secateur.export.codebook`, the ``bits`` option) costs only its codes.
Loading never unpickles or runs code, and a damaged or truncated file is one CheckpointError line.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secateur import __version__
from secateur.errors import CheckpointError
from secateur.export import ExportFormat, ExportOption, register_format
from secateur.export.entropy import AUTO, CODECS, available_codecs, check_codec_name, codec
from secateur.export.sparse_encodings import PATTERN_ENCODINGS, symbols_bytes, symbols_from
from secateur.io.schemas import CompactHeader, check
from secateur.io.storage import FILE_FORMATS, FileFormat, atomic_write_bytes, plain_state_dict
from secateur.provenance import recorded_model, recorded_plan
from secateur.unstructured.masks import masks_of

MAGIC = b"SECATEUR.COMPACT"
FORMAT = "secateur.compact"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<II")  # deflated header length, its crc32
HINT = "re-export the model"
VALUE_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool)}
MAX_CODEBOOK = 256
INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # distinct values = distinct bit patterns


# --------------------------------------------------------------------------------------------- bytes


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw little-endian bytes of ``tensor`` (any dtype, bf16 included)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def tensor_from(data: bytes, dtype: torch.dtype, count: int) -> torch.Tensor:
    """Inverse of :func:`tensor_bytes` for ``count`` elements."""
    size = torch.empty(0, dtype=dtype).element_size()
    if len(data) != count * size:
        raise ValueError(f"a value section has {len(data)} bytes, expected {count * size}")
    if count == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).clone()


def shuffle(data: bytes, itemsize: int) -> bytes:
    """Byte planes (all first bytes, then all second bytes, ...): far easier to entropy-code."""
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes() if itemsize > 1 else data


def unshuffle(data: bytes, itemsize: int) -> bytes:
    """Inverse of :func:`shuffle`."""
    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes() if itemsize > 1 else data


# --------------------------------------------------------------------------------------------- writing


@dataclass
class _Payload:
    """The sections written so far, each coded with the smallest of ``codecs``."""

    codecs: tuple[str, ...]
    sections: list[bytes] = field(default_factory=list)
    table: list[list[Any]] = field(default_factory=list)  # [codec, stored bytes, raw bytes] per section

    def code(self, data: bytes) -> tuple[str, bytes]:
        """The smallest coding of ``data`` among the codecs (ties: the first)."""
        coded = [(name, codec(name).compress(data)) for name in self.codecs]
        return min(coded, key=lambda pair: len(pair[1]))

    def add(self, coded: tuple[str, bytes], raw: int) -> int:
        self.sections.append(coded[1])
        self.table.append([coded[0], len(coded[1]), raw])
        return len(self.sections) - 1

    def smallest(self, candidates: list[tuple[dict, dict[str, bytes]]]) -> tuple[dict, dict[str, int]]:
        """Write the candidate whose sections code smallest; returns (its params, section indices)."""
        coded = [(params, {k: (self.code(v), len(v)) for k, v in sections.items()}) for params, sections in candidates]
        params, best = min(coded, key=lambda c: sum(len(pair[0][1]) for pair in c[1].values()))
        return params, {key: self.add(pair, raw) for key, (pair, raw) in best.items()}


def _codecs(name: str) -> tuple[str, ...]:
    check_codec_name(name)
    return tuple(available_codecs()) if name == AUTO else (name,)


def _value_candidates(values: torch.Tensor, packed: bool) -> list[tuple[dict, dict[str, bytes]]]:
    """Raw values (byte-shuffled unless packed) and, with few distinct values, a lossless codebook."""
    size = values.element_size()
    raw = tensor_bytes(values)
    out = [({"kind": "raw", "shuffle": not packed}, {"values": raw if packed else shuffle(raw, size)})]
    if values.is_floating_point() and values.numel():
        patterns, codes = torch.unique(values.view(INT_OF_SIZE[size]), return_inverse=True)  # -0.0 != 0.0
        centroids = patterns.view(values.dtype)
        if centroids.numel() <= MAX_CODEBOOK:
            bits = max(1, math.ceil(math.log2(centroids.numel())))
            out.append(({"kind": "codebook", "bits": bits, "centroids": int(centroids.numel())},
                        {"centroids": tensor_bytes(centroids),
                         "codes": symbols_bytes(codes.reshape(-1).numpy(), bits, packed)}))
    return out


def _stored_dtype(tensor: torch.Tensor, values: str) -> torch.dtype:
    cast = VALUE_DTYPES[values]
    return cast if cast is not None and tensor.is_floating_point() else tensor.dtype


def _encode_tensor(payload: _Payload, name: str, tensor: torch.Tensor, mask: torch.Tensor | None,
                   values: str, packed: bool) -> dict:
    """One tensor's header entry; its sections go to ``payload``."""
    stored = _stored_dtype(tensor, values)
    flat = tensor.reshape(-1)
    entry: dict[str, Any] = {"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype)[6:],
                             "stored": str(stored)[6:], "mask": None}
    if mask is not None:
        keep = mask.reshape(-1).numpy()
        candidates = [({"encoding": spec_name, **params}, sections) for spec_name in PATTERN_ENCODINGS.names()
                      for params, sections in PATTERN_ENCODINGS.get(spec_name).candidates(
                          keep, tuple(tensor.shape), packed)]
        params, where = payload.smallest(candidates)
        entry["mask"] = {**params, "kept": int(keep.sum()), "sections": where,
                         "crc32": zlib.crc32(np.packbits(keep).tobytes())}
        flat = flat[mask.reshape(-1)]
    params, where = payload.smallest(_value_candidates(flat.to(stored), packed))
    entry["values"] = {**params, "count": int(flat.numel()), "sections": where}
    entry["crc32"] = zlib.crc32(tensor_bytes(_expected(tensor, mask, stored)))
    return entry


def _expected(tensor: torch.Tensor, mask: torch.Tensor | None, stored: torch.dtype) -> torch.Tensor:
    """What loading will give back: ``tensor`` through ``stored`` precision, pruned entries exactly 0."""
    back = tensor.to(stored).to(tensor.dtype)
    return back if mask is None else torch.where(mask, back, torch.zeros((), dtype=tensor.dtype))


def encode_model(model: nn.Module, *, values: str = "fp32", codec_name: str = "lzma",
                 meta: Mapping[str, Any] | None = None) -> tuple[bytes, dict]:
    """(file bytes, header) of ``model`` in the compact format."""
    if values not in VALUE_DTYPES:
        raise ValueError(f"values must be one of {', '.join(VALUE_DTYPES)}")
    payload = _Payload(_codecs(codec_name))
    packed = payload.codecs == ("none",)
    masks = masks_of(model)
    tensors = [_encode_tensor(payload, name, tensor, masks.get(name), values, packed)
               for name, tensor in plain_state_dict(model).items()]
    body = b"".join(payload.sections)
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "packed": packed, "values": values,
        "meta": {**(meta or {}), "model": recorded_model(model), "plan": recorded_plan(model),
                 "versions": {"secateur": __version__, "torch": torch.__version__}},
        "tensors": tensors, "sections": payload.table, "payload_sha256": hashlib.sha256(body).hexdigest(),
    }
    text = zlib.compress(json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8"), 9)
    return MAGIC + PREFIX.pack(len(text), zlib.crc32(text)) + text + body, header


# --------------------------------------------------------------------------------------------- reading


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable compact file ({why}); {HINT}")


def _split(data: bytes, path: Path) -> tuple[dict, bytes]:
    """(header, payload) of a compact file's bytes, framing and checksums checked."""
    if not data.startswith(MAGIC):
        raise _corrupt(path, "no compact-format magic bytes")
    start = len(MAGIC) + PREFIX.size
    if len(data) < start:
        raise _corrupt(path, "truncated header")
    length, crc = PREFIX.unpack_from(data, len(MAGIC))
    text = data[start:start + length]
    if len(text) != length or zlib.crc32(text) != crc:
        raise _corrupt(path, "header checksum mismatch: truncated or modified")
    try:
        header = json.loads(zlib.decompress(text).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupt(path, f"header does not decode: {error}") from None
    check(CompactHeader, header, path, hint=HINT)
    if header["format"] != FORMAT or not 1 <= header["format_version"] <= FORMAT_VERSION:
        raise _corrupt(path, f"format {header['format']!r} version {header['format_version']!r}; "
                             f"this secateur reads {FORMAT} version {FORMAT_VERSION}")
    body = data[start + length:]
    if hashlib.sha256(body).hexdigest() != header["payload_sha256"]:
        raise _corrupt(path, "payload sha256 mismatch: truncated or modified")
    return header, body


def _sections(header: dict, body: bytes) -> list[bytes]:
    """Every section, decoded by its codec and checked for length."""
    out, offset = [], 0
    for name, stored, raw in header["sections"]:
        chunk = body[offset:offset + stored]
        if len(chunk) != stored:
            raise ValueError("payload shorter than its section table")
        out.append(CODECS.get(name).decompress(chunk, raw) if name != "none" else chunk)
        offset += stored
    if offset != len(body):
        raise ValueError("payload longer than its section table")
    return out


def _values(entry: dict, sections: list[bytes], packed: bool, dtype: torch.dtype) -> torch.Tensor:
    spec, count = entry["values"], int(entry["values"]["count"])
    where = {key: sections[index] for key, index in spec["sections"].items()}
    if spec["kind"] == "raw":
        size = torch.empty(0, dtype=dtype).element_size()
        raw = unshuffle(where["values"], size) if spec["shuffle"] else where["values"]
        return tensor_from(raw, dtype, count)
    if spec["kind"] != "codebook":
        raise ValueError(f"unknown value kind {spec['kind']!r}")
    centroids = tensor_from(where["centroids"], dtype, int(spec["centroids"]))
    codes = torch.from_numpy(symbols_from(where["codes"], int(spec["bits"]), count, packed).astype(np.int64))
    if codes.numel() and int(codes.max()) >= centroids.numel():
        raise ValueError("a code points past its codebook")
    return centroids[codes]


def _decode_tensor(entry: dict, sections: list[bytes], packed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(tensor, mask or None) of one header entry, checked against its crc32."""
    dtype, stored = DTYPES[entry["dtype"]], DTYPES[entry["stored"]]
    shape = tuple(int(n) for n in entry["shape"])
    values = _values(entry, sections, packed, stored).to(dtype)
    mask, spec = None, entry["mask"]
    if spec is None:
        tensor = values.reshape(shape)
    else:
        where = {key: sections[index] for key, index in spec["sections"].items()}
        keep = PATTERN_ENCODINGS.get(spec["encoding"]).decode(where, spec, shape, packed)
        if zlib.crc32(np.packbits(keep).tobytes()) != spec["crc32"] or int(keep.sum()) != values.numel():
            raise ValueError(f"mask of {entry['name']} fails its checksum")
        mask = torch.from_numpy(keep.copy()).reshape(shape)
        tensor = torch.zeros(int(np.prod(shape, dtype=np.int64)), dtype=dtype)
        tensor[mask.reshape(-1)] = values
        tensor = tensor.reshape(shape)
    if zlib.crc32(tensor_bytes(tensor)) != entry["crc32"]:
        raise ValueError(f"{entry['name']} fails its checksum")
    return tensor, mask


def read_compact(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(plain tensors, bool masks, header meta) of a compact file; never unpickles."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read {path} ({error.strerror or error}); check the path") from None
    header, body = _split(data, path)
    plain, masks = {}, {}
    try:
        sections = _sections(header, body)
        for entry in header["tensors"]:
            tensor, mask = _decode_tensor(entry, sections, header["packed"])
            plain[entry["name"]] = tensor
            if mask is not None:
                masks[entry["name"]] = mask
    except CheckpointError:
        raise
    except Exception as error:
        raise _corrupt(path, str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    meta = {**header["meta"], "format": FORMAT, "format_version": header["format_version"], "masks": sorted(masks)}
    return plain, masks, meta


# --------------------------------------------------------------------------------------------- the export format


def _choice(options: Mapping[str, object]) -> Callable[[object], object]:
    def parse(value: object) -> object:
        if str(value) not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return str(value)
    return parse


def write_compact(model: nn.Module, path: Path, options: Mapping[str, object]) -> Mapping[str, object]:
    """The ``compact`` format's writer: optional weight sharing, then :func:`encode_model`."""
    from secateur.export.codebook import share_for_export  # lazy: training code only when sharing

    shared, facts = share_for_export(model, options)
    data, header = encode_model(shared, values=str(options["values"]), codec_name=str(options["codec"]),
                                meta={"sharing": facts} if facts else None)
    atomic_write_bytes(path, data)
    return {"tensors": len(header["tensors"]), "codec": options["codec"], **({"sharing": facts} if facts else {}),
            "encodings": {t["name"]: t["mask"]["encoding"] for t in header["tensors"] if t["mask"]}}


def _options() -> dict[str, ExportOption]:
    from secateur.export.codebook import SHARING_OPTIONS  # the weight-sharing options live with their code

    return {
        "values": ExportOption(_choice(VALUE_DTYPES), "value precision: fp32 (bit-exact), fp16 or bf16", "fp32"),
        "codec": ExportOption(check_codec_name, "entropy codec per section: none, zlib, lzma, zstd, brotli, "
                                                "or auto (the smallest per section)", "lzma"),
        **SHARING_OPTIONS,
    }


def is_compact(path: Path) -> bool:
    """Whether ``path`` is a file starting with the compact magic bytes."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


COMPACT = register_format(ExportFormat("compact", ".compact", write_compact,
                                       "sparse patterns + values, optional weight sharing, entropy coded; "
                                       "secateur.load_model reads it", _options()))
FILE_FORMATS.add(FORMAT, FileFormat(is_compact, read_compact), "secateur's compact export")
