"""Canonical Huffman coding of bytes, as Deep Compression codes its weights and indices.

The coded form is a 32-byte bitmap of the byte values present, one code length per present
value, then the bit stream (big-endian, zero-padded). Code lengths are limited to
:data:`MAX_LENGTH` bits (frequencies are flattened until they fit), so decoding is one table
lookup per symbol. Encoding is vectorised with numpy; decoding walks the stream once.
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_LENGTH = 16


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of each of the 256 byte values (0 where absent), at most MAX_LENGTH."""
    counts = counts.astype(np.int64)
    while True:
        lengths = _lengths(counts)
        if lengths.max(initial=0) <= MAX_LENGTH:
            return lengths
        counts = np.where(counts > 0, (counts + 1) // 2, 0)  # flatter statistics, shorter deepest code


def _lengths(counts: np.ndarray) -> np.ndarray:
    present = [int(s) for s in np.flatnonzero(counts)]
    lengths = np.zeros(256, dtype=np.int64)
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    heap: list[tuple[int, int, list[int]]] = [(int(counts[s]), s, [s]) for s in present]
    heapq.heapify(heap)
    while len(heap) > 1:
        weight_a, tie_a, group_a = heapq.heappop(heap)
        weight_b, _, group_b = heapq.heappop(heap)
        for symbol in group_a + group_b:
            lengths[symbol] += 1
        heapq.heappush(heap, (weight_a + weight_b, tie_a, group_a + group_b))
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes for ``lengths`` (symbols ordered by length, then value)."""
    codes = np.zeros(256, dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted((int(s) for s in np.flatnonzero(lengths)), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol], previous = code, int(lengths[symbol])
        code += 1
    return codes


def compress(data: bytes) -> bytes:
    """``data`` Huffman-coded (table + bit stream)."""
    symbols = np.frombuffer(data, np.uint8)
    lengths = code_lengths(np.bincount(symbols, minlength=256))
    codes = canonical_codes(lengths)
    table = np.packbits(lengths > 0).tobytes() + lengths[lengths > 0].astype(np.uint8).tobytes()
    sizes, values = lengths[symbols], codes[symbols]
    starts = np.cumsum(sizes) - sizes
    bits = np.zeros(int(sizes.sum()), dtype=np.uint8)
    for j in range(int(sizes.max(initial=0))):
        sel = sizes > j
        bits[starts[sel] + j] = (values[sel] >> (sizes[sel] - 1 - j)) & 1
    return table + np.packbits(bits).tobytes()


def decompress(data: bytes, size: int) -> bytes:
    """The ``size`` bytes of :func:`compress`'s output ``data``."""
    if size == 0:
        return b""
    present = np.flatnonzero(np.unpackbits(np.frombuffer(data[:32], np.uint8)))
    lengths = np.zeros(256, dtype=np.int64)
    lengths[present] = np.frombuffer(data[32:32 + present.size], np.uint8)
    if len(data) < 32 + present.size or present.size == 0 or lengths.max() > MAX_LENGTH:
        raise ValueError("Huffman table is damaged")
    codes = canonical_codes(lengths)
    lookup_symbol = np.zeros(1 << MAX_LENGTH, dtype=np.int64)
    lookup_length = np.zeros(1 << MAX_LENGTH, dtype=np.int64)
    for symbol in present:
        shift = MAX_LENGTH - int(lengths[symbol])
        lookup_symbol[codes[symbol] << shift:(codes[symbol] + 1) << shift] = symbol
        lookup_length[codes[symbol] << shift:(codes[symbol] + 1) << shift] = lengths[symbol]
    bits = np.unpackbits(np.frombuffer(data[32 + present.size:], np.uint8)).astype(np.int64)
    padded = np.concatenate([bits, np.zeros(MAX_LENGTH, dtype=np.int64)])
    window = np.zeros(bits.size, dtype=np.int64)
    for j in range(MAX_LENGTH):
        window = (window << 1) | padded[j:j + bits.size]
    steps = lookup_length[window].tolist()
    position, starts = 0, []
    for _ in range(size):
        if position >= bits.size:
            raise ValueError("Huffman stream is shorter than its symbol count")
        starts.append(position)
        position += steps[position]
    return lookup_symbol[window[np.array(starts)]].astype(np.uint8).tobytes()
