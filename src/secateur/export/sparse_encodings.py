"""Ways to store *where* a masked tensor's kept entries are: one registered encoding each.

Every encoding turns a flat bool mask into named byte sections (plus a few JSON parameters) and
back, listing the kept entries in flat (row-major) order, so the values that go with them are
stored once, in that order, by the container (:mod:`secateur.export.compact`). Built in:

* ``bitmask``: one bit per entry (``numel / 8`` bytes, whatever the density);
* ``csr``: compressed sparse rows over ``(shape[0], rest)``: row pointers and column indices,
  each in the narrowest unsigned integer type that holds it;
* ``relative``: Han et al.'s relative indexing (Deep Compression, 2016): each kept entry stores
  the number of pruned entries since the previous one in ``bits`` bits (2..8); a gap too long
  for ``bits`` is bridged by the escape symbol ``2**bits - 1`` ("skip that many, no entry"),
  which plays the part of the paper's filler zero without storing a filler value.

An encoding may offer several candidates (``relative``: one per width); the container keeps
the smallest after entropy coding and records its name and parameters. With ``packed`` (no
entropy coder follows) symbols are bit-packed; otherwise each symbol takes a byte, which the
coder compresses far better than bit-packed streams that straddle bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from secateur.registry import Registry

Sections = dict[str, bytes]
Params = dict[str, object]
Candidates = Callable[[np.ndarray, tuple[int, ...], bool], Iterator[tuple[Params, Sections]]]
Decoder = Callable[[Mapping[str, bytes], Mapping[str, object], tuple[int, ...], bool], np.ndarray]

GAP_BITS = range(2, 9)  # widths the relative encoding tries
UINTS = (np.uint8, np.uint16, np.uint32, np.uint64)


@dataclass(frozen=True)
class PatternEncoding:
    """One way to store a sparsity pattern: ``candidates(mask, shape, packed)`` and
    ``decode(sections, params, shape, packed)`` (the flat bool mask)."""

    name: str
    candidates: Candidates
    decode: Decoder
    help: str


PATTERN_ENCODINGS: Registry[PatternEncoding] = Registry("sparse pattern encoding")


def register_encoding(spec: PatternEncoding) -> PatternEncoding:
    """Add ``spec`` to :data:`PATTERN_ENCODINGS`."""
    PATTERN_ENCODINGS.add(spec.name, spec, spec.help)
    return spec


# --------------------------------------------------------------------------------------------- bit packing


def pack_bits(symbols: np.ndarray, bits: int) -> bytes:
    """``symbols`` (each < 2**bits) as a big-endian bit stream, ``bits`` bits each."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    planes = (symbols.astype(np.uint64)[:, None] >> shifts) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1)).tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """The ``count`` symbols of :func:`pack_bits` (uint64)."""
    needed = (count * bits + 7) // 8
    if len(data) != needed:
        raise ValueError(f"bit stream has {len(data)} bytes, expected {needed}")
    flat = np.unpackbits(np.frombuffer(data, np.uint8), count=count * bits).reshape(count, bits)
    weights = (np.uint64(1) << np.arange(bits - 1, -1, -1, dtype=np.uint64))
    return (flat.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def symbols_bytes(symbols: np.ndarray, bits: int, packed: bool) -> bytes:
    """Symbols bit-packed (``packed``) or one byte each (``bits`` <= 8)."""
    return pack_bits(symbols, bits) if packed else symbols.astype(np.uint8).tobytes()


def symbols_from(data: bytes, bits: int, count: int, packed: bool) -> np.ndarray:
    """Inverse of :func:`symbols_bytes`."""
    if packed:
        return unpack_bits(data, bits, count)
    if len(data) != count:
        raise ValueError(f"symbol stream has {len(data)} bytes, expected {count}")
    return np.frombuffer(data, np.uint8).astype(np.uint64)


def narrowest(limit: int) -> np.dtype:
    """The narrowest unsigned integer dtype that holds ``limit``."""
    for dtype in UINTS:
        if limit <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{limit} does not fit 64 bits")


# --------------------------------------------------------------------------------------------- bitmask


def _bitmask_candidates(mask: np.ndarray, shape: tuple[int, ...], packed: bool) -> Iterator[tuple[Params, Sections]]:
    yield {}, {"mask": np.packbits(mask).tobytes()}


def _bitmask_decode(sections: Mapping[str, bytes], params: Mapping[str, object], shape: tuple[int, ...],
                    packed: bool) -> np.ndarray:
    numel = int(np.prod(shape, dtype=np.int64))
    data = sections["mask"]
    if len(data) != (numel + 7) // 8:
        raise ValueError(f"bitmask has {len(data)} bytes, expected {(numel + 7) // 8}")
    return np.unpackbits(np.frombuffer(data, np.uint8), count=numel).astype(bool)


# --------------------------------------------------------------------------------------------- csr


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    numel = int(np.prod(shape, dtype=np.int64))
    rows = shape[0] if len(shape) > 1 else 1
    return rows, (numel // rows if rows else 0)


def _csr_candidates(mask: np.ndarray, shape: tuple[int, ...], packed: bool) -> Iterator[tuple[Params, Sections]]:
    rows, cols = _rows(shape)
    grid = mask.reshape(rows, cols)
    indptr = np.concatenate([[0], np.cumsum(grid.sum(axis=1))])
    indices = np.nonzero(grid)[1]
    ptr_type, idx_type = narrowest(int(indptr[-1])), narrowest(max(cols - 1, 0))
    yield ({"indptr": ptr_type.name, "indices": idx_type.name},
           {"indptr": indptr.astype(ptr_type).tobytes(), "indices": indices.astype(idx_type).tobytes()})


def _csr_decode(sections: Mapping[str, bytes], params: Mapping[str, object], shape: tuple[int, ...],
                packed: bool) -> np.ndarray:
    rows, cols = _rows(shape)
    indptr = np.frombuffer(sections["indptr"], np.dtype(str(params["indptr"]))).astype(np.int64)
    indices = np.frombuffer(sections["indices"], np.dtype(str(params["indices"]))).astype(np.int64)
    if indptr.size != rows + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size:
        raise ValueError("CSR row pointers are inconsistent")
    if indices.size and (indices.max() >= cols):
        raise ValueError("CSR column index out of range")
    grid = np.zeros((rows, cols), dtype=bool)
    grid[np.repeat(np.arange(rows), np.diff(indptr)), indices] = True
    if int(grid.sum()) != indices.size:
        raise ValueError("CSR holds a column twice in one row")
    return grid.reshape(-1)


# --------------------------------------------------------------------------------------------- relative


def gap_symbols(mask: np.ndarray, bits: int) -> np.ndarray:
    """Han's relative indices: per kept entry, escapes of ``2**bits - 1`` then the remaining gap."""
    escape = (1 << bits) - 1
    positions = np.flatnonzero(mask)
    gaps = np.diff(positions, prepend=-1) - 1
    skips, rest = np.divmod(gaps, escape)
    symbols = np.full(int(skips.sum()) + positions.size, escape, dtype=np.uint64)
    symbols[np.cumsum(skips + 1) - 1] = rest
    return symbols


def positions_from_gaps(symbols: np.ndarray, bits: int) -> np.ndarray:
    """Flat positions of the kept entries from :func:`gap_symbols`."""
    escape = (1 << bits) - 1
    entry = symbols < escape
    step = np.where(entry, symbols.astype(np.int64) + 1, escape)
    return (np.cumsum(step) - 1)[entry]


def _relative_candidates(mask: np.ndarray, shape: tuple[int, ...], packed: bool) -> Iterator[tuple[Params, Sections]]:
    for bits in GAP_BITS:
        symbols = gap_symbols(mask, bits)
        yield {"bits": bits, "symbols": int(symbols.size)}, {"gaps": symbols_bytes(symbols, bits, packed)}


def _relative_decode(sections: Mapping[str, bytes], params: Mapping[str, object], shape: tuple[int, ...],
                     packed: bool) -> np.ndarray:
    bits, count = int(str(params["bits"])), int(str(params["symbols"]))
    numel = int(np.prod(shape, dtype=np.int64))
    positions = positions_from_gaps(symbols_from(sections["gaps"], bits, count, packed), bits)
    if positions.size and positions[-1] >= numel:
        raise ValueError("relative index runs past the end of the tensor")
    flat = np.zeros(numel, dtype=bool)
    flat[positions] = True
    return flat


BITMASK = register_encoding(PatternEncoding("bitmask", _bitmask_candidates, _bitmask_decode,
                                            "one bit per entry"))
CSR = register_encoding(PatternEncoding("csr", _csr_candidates, _csr_decode,
                                        "compressed sparse rows: row pointers + column indices"))
RELATIVE = register_encoding(PatternEncoding("relative", _relative_candidates, _relative_decode,
                                             "Han's relative indexing: 2..8-bit gaps, escape for long ones"))
