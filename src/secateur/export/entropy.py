"""Entropy coders for the byte sections of a compact file: one registered codec each.

A :class:`Codec` compresses one section and restores it given its original length. Built in:
``none``; ``zlib`` (raw deflate) and ``lzma`` (raw LZMA2, no container overhead) from the
standard library; ``huffman`` (canonical Huffman over bytes, :mod:`secateur.export.huffman`, the
paper's coder); ``zstd`` (the ``zstandard`` package) and ``brotli`` when installed
(``pip install secateur[compact]``). Each section is coded on its own, so indices, codebook
codes and values each get a model of their own statistics, and a codec that does not help a
section can be skipped for it (``auto`` picks the smallest available codec per section).
"""

from __future__ import annotations

import importlib
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from secateur.errors import ConfigError
from secateur.export import huffman
from secateur.registry import Registry

AUTO = "auto"  # not a codec: the smallest available codec, chosen per section
LZMA_PRESET = 9 | lzma.PRESET_EXTREME


def _lzma_filters(size: int) -> list[dict]:
    """Raw LZMA2 at preset 9e with a dictionary no larger than the data (a 64 MiB one is slow to set up)."""
    return [{"id": lzma.FILTER_LZMA2, "preset": LZMA_PRESET, "dict_size": max(size, 4096)}]


@dataclass(frozen=True)
class Codec:
    """One entropy coder: ``compress(data)``, ``decompress(data, size)``, and whether it is installed."""

    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int], bytes]
    help: str
    module: str | None = None  # the optional package it needs

    def available(self) -> bool:
        """Whether the package this codec needs can be imported."""
        if self.module is None:
            return True
        try:
            importlib.import_module(self.module)
        except ImportError:
            return False
        return True


CODECS: Registry[Codec] = Registry("entropy codec")


def register_codec(spec: Codec) -> Codec:
    """Add ``spec`` to :data:`CODECS`."""
    CODECS.add(spec.name, spec, spec.help)
    return spec


def codec(name: str) -> Codec:
    """The codec ``name``; a one-line error if its package is missing."""
    spec = CODECS.get(name)
    if not spec.available():
        raise ConfigError(f"codec {name!r} needs the {spec.module} package; pip install 'secateur[compact]' "
                          f"or choose one of {', '.join(available_codecs())}")
    return spec


def available_codecs() -> list[str]:
    """Names of the codecs usable here."""
    return [name for name in CODECS.names() if CODECS.get(name).available()]


def check_codec_name(value: object) -> str:
    """An export option's codec: a registered, installed codec name or ``auto``."""
    name = str(value)
    if name != AUTO:
        codec(name)
    return name


def _sized(data: bytes, size: int) -> bytes:
    if len(data) != size:
        raise ValueError(f"decoded {len(data)} bytes, expected {size}")
    return data


def _lzma_compress(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(data)))


def _lzma_decompress(data: bytes, size: int) -> bytes:
    return _sized(lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(size)), size)


def _zlib_compress(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def _zlib_decompress(data: bytes, size: int) -> bytes:
    return _sized(zlib.decompress(data, -15), size)


def _huffman_decompress(data: bytes, size: int) -> bytes:
    return _sized(huffman.decompress(data, size), size)


def _zstd_compress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=22, write_content_size=False, write_checksum=False).compress(data)


def _zstd_decompress(data: bytes, size: int) -> bytes:
    import zstandard

    return _sized(zstandard.ZstdDecompressor().decompress(data, max_output_size=size), size)


def _brotli_compress(data: bytes) -> bytes:
    import brotli

    return bytes(brotli.compress(data, quality=11))


def _brotli_decompress(data: bytes, size: int) -> bytes:
    import brotli

    return _sized(bytes(brotli.decompress(data)), size)


NONE = register_codec(Codec("none", bytes, _sized, "stored as is"))
ZLIB = register_codec(Codec("zlib", _zlib_compress, _zlib_decompress, "raw deflate, level 9 (standard library)"))
LZMA = register_codec(Codec("lzma", _lzma_compress, _lzma_decompress, "raw LZMA2, preset 9e (standard library)"))
HUFFMAN = register_codec(Codec("huffman", huffman.compress, _huffman_decompress,
                               "canonical Huffman over bytes, as in Deep Compression (numpy)"))
ZSTD = register_codec(Codec("zstd", _zstd_compress, _zstd_decompress, "Zstandard level 22 (zstandard package)",
                            "zstandard"))
BROTLI = register_codec(Codec("brotli", _brotli_compress, _brotli_decompress, "Brotli quality 11 (brotli package)",
                              "brotli"))
