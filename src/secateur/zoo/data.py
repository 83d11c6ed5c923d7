"""Datasets: where their files are looked up, download with md5 checks, validation, splits, batches.

Each dataset is one :class:`DatasetSpec` in :data:`DATASETS` (file names, md5 sums, mirrors,
shape, loader), so adding a dataset is one registry entry. Images stay in memory as uint8
``(N, C, H, W)`` tensors and are normalised per batch by :func:`batches`.

Files are looked up in ``data_dir`` (or ``data_dir/<name>``), then ``$SECATEUR_DATA/<name>``,
then ``~/.cache/secateur/<name>``, then Debian's dataset packages' fixed place
``/usr/share/datasets/<name>`` (e.g. ``apt-get install dataset-fashion-mnist``); if absent they
are downloaded into the cache folder, streamed to a temporary file, verified against the
official md5 and only then renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.client import HTTPException
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from torch.utils.data import Dataset as TorchDataset

from secateur.errors import ConfigError, DataError
from secateur.io.idx import read_idx
from secateur.registry import Registry

# --------------------------------------------------------------------------- splits and datasets

@dataclass(frozen=True, repr=False)
class Split(TorchDataset):
    """One part of a dataset: uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``.

    It is also a map-style ``torch.utils.data.Dataset`` for your own loop: ``split[i]`` is the
    normalised float image ``(C, H, W)`` (``(x / 255 - mean) / std``, the dataset's statistics,
    which :class:`Dataset` attaches to its splits) and the int label, so it goes into a
    ``DataLoader`` as it is. A split made on its own (no statistics) scales to [0, 1] only.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...] | None = field(default=None, compare=False)
    std: tuple[float, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"Split images must be a 4-D uint8 tensor (N, C, H, W), got "
                            f"{self.images.dim()}-D {self.images.dtype}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise DataError(f"Split labels must be an int64 tensor of shape ({len(self.images)},), "
                            f"got {self.labels.dtype} of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(normalised float image (C, H, W), int label)`` of example ``index``."""
        scale, shift = self._affine
        return self.images[index].float().mul_(scale).add_(shift), int(self.labels[index].item())

    @functools.cached_property
    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` per channel, ``(C, 1, 1)``: ``x * scale + shift`` is ``(x / 255 - mean) / std``."""
        channels = self.images.shape[1]
        mean = torch.tensor(self.mean or (0.0,) * channels, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std or (1.0,) * channels, dtype=torch.float32).view(-1, 1, 1)
        return 1.0 / (255.0 * std), -mean / std

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.images.shape[1:])
        return f"Split({len(self)} images of {shape}, uint8; {len(self.labels.unique())} labels)"

    def subset(self, n: int) -> Split:
        """The first ``n`` items (a view, no copy); ``n`` larger than the split keeps it all."""
        if n < 0:
            raise ConfigError(f"subset size must be >= 0, got {n}")
        return replace(self, images=self.images[:n], labels=self.labels[:n])

    def normalised(self, mean: tuple[float, ...], std: tuple[float, ...]) -> Split:
        """The same split, whose items are normalised with ``mean`` / ``std``."""
        return self if (self.mean, self.std) == (mean, std) else replace(self, mean=mean, std=std)


@dataclass(frozen=True, repr=False)
class Dataset:
    """A loaded dataset: train / validation / test splits plus normalisation statistics.

    Its splits are torch datasets normalised with ``mean`` / ``std``: ``data.train[0]`` is a
    float image and an int label, and ``DataLoader(data.train, batch_size=64)`` works.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):  # frozen: the splits get the statistics once, here
            object.__setattr__(self, part, getattr(self, part).normalised(self.mean, self.std))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{part}={len(getattr(self, part))}" for part in ("train", "val", "test"))
        shape = "x".join(map(str, self.input_shape))
        return f"Dataset({self.name!r}: {sizes}; {shape} images, {self.num_classes} classes)"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train.images.shape[1:]
        return (int(c), int(h), int(w))

    def subset(self, train: int | None = None, val: int | None = None,
               test: int | None = None) -> Dataset:
        """A smaller copy for tests and quick runs (first items; mean/std stay those of the full set)."""
        return replace(self, train=_maybe_subset(self.train, train),
                       val=_maybe_subset(self.val, val), test=_maybe_subset(self.test, test))


def _maybe_subset(split: Split, n: int | None) -> Split:
    return split if n is None else split.subset(n)


# --------------------------------------------------------------------------- registry entries

class RawArrays(NamedTuple):
    """What a loader returns: numpy arrays (images ``(N, C, H, W)`` uint8) and where each came from.

    A loader that finds its own validation split returns it too (then none is carved out of
    train), and one whose spec leaves ``num_classes`` open says how many classes it found.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    sources: tuple[str, str, str, str]
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    num_classes: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to find, download, parse and check one dataset.

    ``num_classes``, ``shape`` and ``counts`` are None for a dataset whose files say them (an
    image folder); ``val_size`` is a count, or a fraction of the training set.
    """

    name: str
    description: str
    files: tuple[tuple[str, str], ...]  # (file name, official md5)
    mirrors: tuple[str, ...]  # base URLs, tried in order
    num_classes: int | None
    shape: tuple[int, int, int] | None
    counts: tuple[int, int] | None  # official (train, test) sizes
    val_size: int | float
    loader: Callable[[DatasetSpec, dict[str, Path]], RawArrays]


DATASETS: Registry[DatasetSpec] = Registry("dataset", builtins=("secateur.zoo.imagefolder",))


def _register(spec: DatasetSpec) -> None:
    DATASETS.add(spec.name, spec, spec.description)


def _load_idx_dataset(spec: DatasetSpec, paths: dict[str, Path]) -> RawArrays:
    """MNIST-style: four IDX files (train images, train labels, test images, test labels)."""
    names = [name for name, _ in spec.files]
    arrays = []
    for name in names:
        array = read_idx(paths[name], expected_dims=3 if "images" in name else 1)
        _check_idx_type(paths[name], array, "images" in name)
        arrays.append(array[:, None] if array.ndim == 3 else array)
    train_x, train_y, test_x, test_y = arrays
    sa, sb, sc, sd = (str(paths[n]) for n in names)
    return RawArrays(train_x, train_y, test_x, test_y, sources=(sa, sb, sc, sd))


def _check_idx_type(path: Path, array: np.ndarray, images: bool) -> None:
    """Images must be uint8 (IDX type 0x08), labels whole numbers; other IDX types name the file."""
    if (array.dtype == np.uint8) if images else array.dtype.kind in "iu":
        return
    want = "uint8 images (IDX type 0x08)" if images else "whole-number labels (IDX type 0x08)"
    raise DataError(f"{path}: holds {array.dtype} items, secateur reads {want}; is it the right file?")


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

_register(DatasetSpec(
    name="mnist", description="MNIST handwritten digits, 60k/10k 28x28 grey (LeCun et al.)",
    files=tuple(zip(_MNIST_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                   "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    num_classes=10, shape=(1, 28, 28), counts=(60000, 10000), val_size=5000, loader=_load_idx_dataset))

_register(DatasetSpec(
    name="fashion-mnist", description="Fashion-MNIST clothing, 60k/10k 28x28 grey (Zalando Research)",
    files=tuple(zip(_MNIST_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                   "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    num_classes=10, shape=(1, 28, 28), counts=(60000, 10000), val_size=5000, loader=_load_idx_dataset))


_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_TRAIN = tuple(f"{_CIFAR_DIR}/data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = f"{_CIFAR_DIR}/test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _read_cifar_archive(path: Path) -> RawArrays:
    """Parse ``cifar-10-binary.tar.gz`` (records: 1 label byte + 3072 CHW bytes); no md5, no counts."""
    wanted = (*_CIFAR_TRAIN, _CIFAR_TEST)
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # sequential: no seeking back in the gzip stream
                if member.name in wanted and member.isfile():
                    content = tar.extractfile(member)  # a file member always has content
                    if content is not None:
                        blobs[member.name] = content.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{path}: cannot read the tar.gz archive ({err}); re-download it") from None
    missing = [name for name in wanted if name not in blobs]
    if missing:
        raise DataError(f"{path}: archive lacks {', '.join(missing)}; is it the binary version "
                        "cifar-10-binary.tar.gz? re-download it")
    train = [_cifar_records(path, name, blobs[name]) for name in _CIFAR_TRAIN]
    test_x, test_y = _cifar_records(path, _CIFAR_TEST, blobs[_CIFAR_TEST])
    return RawArrays(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                     test_x, test_y, sources=(str(path),) * 4)


def _cifar_records(path: Path, member: str, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Split one CIFAR batch file into (images (N, 3, 32, 32), labels (N,))."""
    if len(blob) % _CIFAR_RECORD:
        raise DataError(f"{path}: {member} has {len(blob)} bytes, not a multiple of the "
                        f"{_CIFAR_RECORD}-byte record size; re-download it")
    records = np.frombuffer(blob, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].copy()


def _load_cifar10(spec: DatasetSpec, paths: dict[str, Path]) -> RawArrays:
    return _read_cifar_archive(paths[spec.files[0][0]])


_register(DatasetSpec(
    name="cifar10", description="CIFAR-10 objects, 50k/10k 32x32 colour (Krizhevsky), binary version",
    files=(("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),),
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    num_classes=10, shape=(3, 32, 32), counts=(50000, 10000), val_size=5000, loader=_load_cifar10))


def _load_digits(spec: DatasetSpec, paths: dict[str, Path]) -> RawArrays:
    """scikit-learn's bundled 8x8 digits (0..16 scaled to 0..255), fixed seeded 80/20 train/test split."""
    try:
        from sklearn.datasets import load_digits  # lazy: optional dependency (the [digits] extra)
    except ImportError:
        raise DataError("the 'digits' dataset needs scikit-learn: pip install secateur[digits]") from None
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.uint8)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).numpy()
    n_test = spec.counts[1] if spec.counts is not None else len(labels) // 5
    test, train = order[:n_test], order[n_test:]
    return RawArrays(images[train], labels[train], images[test], labels[test],
                     sources=("sklearn.datasets.load_digits",) * 4)


_register(DatasetSpec(
    name="digits", description="scikit-learn's 1,797 8x8 digits (offline, for quick tests)",
    files=(), mirrors=(), num_classes=10, shape=(1, 8, 8), counts=(1438, 359), val_size=200,
    loader=_load_digits))


# --------------------------------------------------------------------------- file lookup

SYSTEM_DATASETS = Path("/usr/share/datasets")  # where Debian's dataset-* packages install (last looked up)


def _cache_root() -> Path:
    return Path.home() / ".cache" / "secateur"


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for ``name``'s files, in order (also used in error messages)."""
    spec = DATASETS.get(name)
    dirs: list[Path] = []
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        dirs += [data_dir, data_dir / spec.name]
    env = os.environ.get("SECATEUR_DATA")
    if env:
        dirs.append(Path(env).expanduser() / spec.name)
    dirs += [_cache_root() / spec.name, SYSTEM_DATASETS / spec.name]
    return list(dict.fromkeys(dirs))


def _file_in(folder: Path, file_name: str) -> Path | None:
    """``folder/file_name``, or its uncompressed twin for a ``.gz`` IDX file."""
    for candidate in (file_name, file_name.removesuffix(".gz")):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _find_files(spec: DatasetSpec, dirs: Sequence[Path]) -> dict[str, Path] | None:
    """The first folder that holds all of the dataset's files, as {file name: path}."""
    for folder in dirs:
        found = {name: _file_in(folder, name) for name, _ in spec.files}
        paths = {name: path for name, path in found.items() if path is not None}
        if len(paths) == len(found):
            return paths
    return None


def _missing_message(spec: DatasetSpec, dirs: Sequence[Path], why: str) -> str:
    names = ", ".join(name for name, _ in spec.files)
    where = ", ".join(str(d) for d in dirs)
    return (f"{spec.name} files not found ({why}): put {names} in one of the searched folders "
            f"{where} (or pass data_dir / --data-dir, or set SECATEUR_DATA to the folder holding {spec.name}/)")


# --------------------------------------------------------------------------- download

class _Response(Protocol):
    """What :func:`_stream` needs of a ``urlopen`` result (an ``HTTPResponse``, or ``addinfourl``)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def __enter__(self) -> _Response: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None, /) -> object: ...


def _urlopen(url: str, timeout: float) -> _Response:
    """Open ``url`` (module-level so tests can replace the network); the mirrors are https/http URLs."""
    return urllib.request.urlopen(url, timeout=timeout)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stream(url: str, handle: BinaryIO, label: str) -> None:
    """Copy ``url`` into the open file ``handle`` with a rich progress bar on stderr."""
    with _urlopen(url, timeout=60) as response:
        headers = getattr(response, "headers", None)  # http(s) responses have headers, file: URLs may not
        total = headers.get("Content-Length") if headers else None
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task(f"downloading {label}", total=int(total) if total else None)
            for chunk in iter(lambda: response.read(1 << 16), b""):
                handle.write(chunk)
                bar.advance(task, len(chunk))


def _download_file(urls: Sequence[str], dest: Path, md5: str) -> None:
    """Fetch ``dest`` from the first URL that works and matches ``md5``; atomic, no leftovers."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                _stream(url, handle, dest.name)
            got = _md5(tmp)
            if got == md5:
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
                return
            problems.append(f"{url}: md5 {got} does not match the official {md5}")
        except (OSError, HTTPException, ValueError) as err:
            problems.append(f"{url}: {getattr(err, 'reason', None) or err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {dest.name} ({'; '.join(problems)})")


def _download(spec: DatasetSpec, folder: Path, dirs: Sequence[Path]) -> dict[str, Path]:
    """Download every missing file of ``spec`` into ``folder``; DataError with instructions on failure."""
    try:
        for name, md5 in spec.files:
            if _file_in(folder, name) is None:
                _download_file([base + name for base in spec.mirrors], folder / name, md5)
    except DataError as err:
        raise DataError(_missing_message(spec, dirs, str(err))) from None
    except OSError as err:
        raise DataError(_missing_message(spec, dirs, f"cannot write to {folder}: {err.strerror or err}")) from None
    return {name: folder / name for name, _ in spec.files}


def _locate(spec: DatasetSpec, data_dir: str | Path | None, download: bool) -> dict[str, Path]:
    """Paths of the dataset's files, searching then (if allowed) downloading."""
    dirs = search_dirs(spec.name, data_dir)
    if not spec.files:
        return {}
    found = _find_files(spec, dirs)
    if found is not None:
        return found
    if not download:
        raise DataError(_missing_message(spec, dirs, "downloading is off"))
    return _download(spec, _cache_root() / spec.name, dirs)


# --------------------------------------------------------------------------- validation and assembly

def _check_pair(spec: DatasetSpec, part: str, images: np.ndarray, labels: np.ndarray,
                sources: tuple[str, str], count: int | None, num_classes: int | None = None) -> None:
    """Shapes, counts and label range of one official split (shape and count when the spec has them)."""
    img_src, lab_src = sources
    num_classes = num_classes or spec.num_classes or 0
    if len(images) != len(labels):
        raise DataError(f"{spec.name} {part}: {img_src} has {len(images)} images but {lab_src} has "
                        f"{len(labels)} labels; re-download the files")
    if spec.shape is not None and tuple(images.shape[1:]) != spec.shape:
        raise DataError(f"{spec.name} {part}: {img_src} holds images of shape {tuple(images.shape[1:])}, "
                        f"expected {spec.shape}; is it the right file?")
    if count is not None and len(images) != count:
        raise DataError(f"{spec.name} {part}: {img_src} has {len(images)} items, the official "
                        f"{part} set has {count}; re-download the files")
    if labels.size and num_classes and int(labels.max()) >= num_classes:
        raise DataError(f"{spec.name} {part}: {lab_src} has label {int(labels.max())}, outside "
                        f"0..{num_classes - 1}; re-download the file")


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)))


def _carve_val(full: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """Split the official training set into (train, val) by a seeded permutation; order kept."""
    n = len(full)
    if not 0 <= val_size < n:
        raise ConfigError(f"val_size must be in 0..{n - 1} (the training set has {n} items), got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    return (Split(full.images[train_idx], full.labels[train_idx]),
            Split(full.images[val_idx], full.labels[val_idx]))


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 pixels scaled to [0, 1] (via a 256-bin histogram)."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        total = hist.sum().clamp_min(1.0)
        mean = float((hist * values).sum() / total)
        var = float((hist * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    return tuple(means), tuple(stds)


def load_dataset(name: str, data_dir: str | Path | None = None, *, val_size: int | float | None = None,
                 seed: int = 0, download: bool = True) -> Dataset:
    """Load dataset ``name`` (see :data:`DATASETS`), checked, with a seeded validation carve-out.

    ``val`` is ``val_size`` items (or that fraction) of the official training set chosen by
    ``seed`` (a dataset that brings its own validation split, an image folder's ``val/``, keeps
    it unless ``val_size`` is given); ``train`` is the rest; ``test`` is the official test set.
    ``mean``/``std`` are those of ``train``.
    """
    spec = DATASETS.get(name)
    raw = spec.loader(spec, _locate(spec, data_dir, download))
    classes = raw.num_classes or spec.num_classes or 0
    counts: tuple[int | None, int | None] = spec.counts or (None, None)
    _check_pair(spec, "training", raw.train_images, raw.train_labels, raw.sources[:2], counts[0], classes)
    _check_pair(spec, "test", raw.test_images, raw.test_labels, raw.sources[2:], counts[1], classes)
    full = _to_split(raw.train_images, raw.train_labels)
    if raw.val_images is not None and raw.val_labels is not None and val_size is None:
        train, val = full, _to_split(raw.val_images, raw.val_labels)
    else:
        train, val = _carve_val(full, _val_count(spec.val_size if val_size is None else val_size, len(full)), seed)
    mean, std = _channel_stats(train.images)
    return Dataset(name=spec.name, train=train, val=val, test=_to_split(raw.test_images, raw.test_labels),
                   num_classes=classes, mean=mean, std=std)


def _val_count(size: int | float, n: int) -> int:
    """A validation size as a count: ``size`` itself, or a fraction (0 < size < 1) of ``n``, at least 1."""
    if isinstance(size, float) and 0 < size < 1:
        return max(1, round(size * n))
    return int(size)


# --------------------------------------------------------------------------- batching

def batches(split: Split, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
            shuffle: bool = False, generator: torch.Generator | None = None,
            device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)``: float32 ``(x / 255 - mean) / std`` on ``device`` and int64 labels.

    The last batch may be smaller. ``shuffle`` draws a fresh permutation from ``generator``
    (seed it for a reproducible order). uint8 is moved to ``device`` before conversion.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    channels = split.images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise ConfigError(f"std must be > 0, got {tuple(std)}")
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = -torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) / std_t
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = split.images[start:start + batch_size], split.labels[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = split.images[idx], split.labels[idx]
        x = xb.to(device).float().mul_(scale).add_(shift)
        yield x, yb.to(device)
