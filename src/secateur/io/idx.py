"""Reader for IDX files (the MNIST format), gzip-compressed or not, with strict validation.

An IDX file is a 4-byte magic number ``00 00 <type code> <ndim>``, ``ndim`` big-endian uint32
dimensions, then exactly ``prod(dims)`` items. Every way a file can be broken (cut-off download,
corrupt gzip, wrong file, trailing bytes) becomes a one-line :class:`~secateur.errors.DataError`
that names the file, never a numpy/zlib traceback.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from secateur.errors import DataError

# IDX type code -> (numpy dtype, name used in messages); multi-byte types are big-endian.
IDX_TYPES: dict[int, tuple[str, str]] = {
    0x08: (">u1", "uint8"),
    0x09: (">i1", "int8"),
    0x0B: (">i2", "int16"),
    0x0C: (">i4", "int32"),
    0x0D: (">f4", "float32"),
    0x0E: (">f8", "float64"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_REDOWNLOAD = "re-download the file"


def read_idx(path: str | Path, expected_dims: int | None = None,
             expected_count: int | None = None) -> np.ndarray:
    """Read an IDX file (``*-ubyte.gz`` or uncompressed ``*-ubyte``) into a writable array.

    ``expected_dims`` / ``expected_count`` check the number of dimensions and of items (the
    first dimension) so that a labels file passed as an images file fails with a clear message.
    """
    path = Path(path)
    raw = _read_bytes(path)
    dtype, dims, offset = _parse_header(path, raw, expected_dims)
    _check_payload(path, dims, np.dtype(dtype).itemsize, len(raw) - offset)
    if expected_count is not None and dims[0] != expected_count:
        raise DataError(f"{path}: has {dims[0]} items, expected {expected_count}; {_REDOWNLOAD}")
    array = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)
    return array.astype(array.dtype.newbyteorder("="), copy=True)


def _read_bytes(path: Path) -> bytes:
    """The file's (decompressed) bytes; gzip is detected by content, not by name."""
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
            handle.seek(0)
            if head == _GZIP_MAGIC:
                return _gunzip(path, handle)
            if path.suffix == ".gz":
                raise DataError(f"{path}: not a gzip file (starts with 0x{head.hex() or 'EOF'}); "
                                f"{_REDOWNLOAD}")
            return handle.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied; check the file's permissions") from None


def _gunzip(path: Path, handle: BinaryIO) -> bytes:
    """Decompress a whole gzip stream, turning every gzip/zlib failure into a DataError."""
    try:
        with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
            return stream.read()
    except EOFError:
        problem = "truncated gzip data (the download was probably cut off)"
    except gzip.BadGzipFile as err:
        problem = f"corrupt gzip data ({err})"
    except zlib.error as err:
        problem = f"corrupt gzip data (zlib: {err})"
    except OSError as err:
        problem = f"cannot read ({err.strerror or err})"
    raise DataError(f"{path}: {problem}; {_REDOWNLOAD}")


def _expected_magic(expected_dims: int | None) -> str:
    """Human hint for the magic number we wanted."""
    if expected_dims is None:
        return "00 00, a type code such as 0x08 for uint8, and the number of dimensions"
    kind = {1: "labels", 3: "images"}.get(expected_dims, "data")
    return f"0x{0x0800 + expected_dims:08X} for an IDX file of {expected_dims}-D uint8 {kind}"


def _parse_header(path: Path, raw: bytes, expected_dims: int | None) -> tuple[str, tuple[int, ...], int]:
    """Validate the magic number and dimensions; return (dtype, dims, payload offset)."""
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(raw)} bytes); {_REDOWNLOAD}")
    magic = int.from_bytes(raw[:4], "big")
    type_code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or type_code not in IDX_TYPES or ndim == 0:
        raise DataError(f"{path}: wrong magic number 0x{magic:08X} "
                        f"(expected {_expected_magic(expected_dims)}); {_REDOWNLOAD}")
    if expected_dims is not None and ndim != expected_dims:
        raise DataError(f"{path}: has {ndim} dimensions, expected {expected_dims} "
                        f"(magic 0x{magic:08X}, expected {_expected_magic(expected_dims)}); "
                        "is it the right file?")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"{path}: truncated header: {ndim} dimensions need {offset} bytes, "
                        f"file has {len(raw)}; {_REDOWNLOAD}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return IDX_TYPES[type_code][0], dims, offset


def _check_payload(path: Path, dims: tuple[int, ...], itemsize: int, have: int) -> None:
    """The payload must hold exactly prod(dims) items: no truncation, no trailing bytes."""
    need = math.prod(dims) * itemsize
    if have == need:
        return
    shape = "x".join(map(str, dims))
    unit = "bytes" if itemsize == 1 else f"bytes ({itemsize} per item)"
    said = f"header says {shape} = {need} {unit} of data, file has {have}"
    problem = "truncated" if have < need else f"{have - need} unexpected trailing bytes"
    raise DataError(f"{path}: {problem}: {said}; {_REDOWNLOAD}")
