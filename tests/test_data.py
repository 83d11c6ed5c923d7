"""Datasets: the IDX reader, lookup order, download + md5, validation, splits and batching."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from secateur.errors import ConfigError, DataError, UnknownNameError
from secateur.io.idx import read_idx
from secateur.zoo import data as data_mod
from secateur.zoo.data import (
    DATASETS,
    Dataset,
    Split,
    batches,
    load_dataset,
    search_dirs,
)

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Serialise ``array`` as an IDX file (big-endian)."""
    dtype = {0x08: ">u1", 0x0C: ">i4"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(dtype).tobytes()


def write(path: Path, payload: bytes, compress: bool = True) -> Path:
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake home (so ~/.cache is empty), no $SECATEUR_DATA, and an empty system datasets folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SECATEUR_DATA", raising=False)
    monkeypatch.setattr(data_mod, "SYSTEM_DATASETS", tmp_path / "system")
    return home


def fake_mnist(folder: Path, n_train: int = 6, n_test: int = 4, n_train_labels: int | None = None,
               max_label: int = 9) -> Path:
    """Small well-formed IDX files with MNIST's names (not the official counts)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = (n_train, n_train if n_train_labels is None else n_train_labels, n_test, n_test)
    for name, n in zip(MNIST_FILES, sizes):
        shape = (n, 28, 28) if "images" in name else (n,)
        write(folder / name, idx_bytes(rng.integers(0, max_label + 1, size=shape)))
    return folder


# --------------------------------------------------------------------------- real MNIST

def test_mnist_shapes_dtypes_and_stats(mnist: Dataset) -> None:
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55000, 5000, 10000)
    for split in (mnist.train, mnist.val, mnist.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (1, 28, 28)
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10 and mnist.name == "mnist"
    assert mnist.mean == pytest.approx((0.1307,), abs=1e-3)
    assert mnist.std == pytest.approx((0.3081,), abs=1e-3)
    scaled = mnist.train.images[:2000].double() / 255
    assert mnist.mean[0] == pytest.approx(scaled.mean().item(), abs=0.01)


def test_mnist_label_counts(mnist: Dataset) -> None:
    train_val = torch.cat([mnist.train.labels, mnist.val.labels])
    assert torch.bincount(train_val, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist.test.labels, minlength=10).tolist() == TEST_COUNTS


def test_mnist_val_split_deterministic_and_disjoint(mnist: Dataset, data_root: Path) -> None:
    official = torch.from_numpy(read_idx(data_root / "mnist" / MNIST_FILES[0], 3, 60000)).reshape(60000, -1)
    again = load_dataset("mnist", data_root / "mnist", download=False)
    assert torch.equal(again.val.images, mnist.val.images) and torch.equal(again.val.labels, mnist.val.labels)
    other = load_dataset("mnist", data_root, val_size=100, seed=1, download=False)  # parent folder accepted
    assert len(other.val) == 100 and len(other.train) == 59900
    assert not torch.equal(other.val.images, mnist.val.images[:100])
    # Together train and val are exactly the official training images (same multiset of rows).
    weights = torch.arange(1, 99, dtype=torch.int64) * 2654435761

    def key(images: torch.Tensor) -> torch.Tensor:  # a hash of each image's 784 bytes
        return (images.reshape(len(images), -1).contiguous().view(torch.int64) * weights).sum(1)

    joined = torch.cat([key(mnist.train.images), key(mnist.val.images)]).sort().values
    assert torch.equal(joined, key(official).sort().values)


def test_carve_val_is_a_seeded_partition() -> None:
    n = 300
    full = Split(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))
    train, val = data_mod._carve_val(full, 50, seed=7)
    train2, val2 = data_mod._carve_val(full, 50, seed=7)
    _, val3 = data_mod._carve_val(full, 50, seed=8)
    assert torch.equal(val.labels, val2.labels) and torch.equal(train.labels, train2.labels)
    assert not torch.equal(val.labels, val3.labels)
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(n))
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())
    assert val.labels.tolist() != list(range(50))  # a permutation, not the first items
    with pytest.raises(ConfigError, match="val_size"):
        data_mod._carve_val(full, n, seed=0)


def test_subsets_are_views(mnist: Dataset) -> None:
    small = mnist.subset(train=100, val=10)
    assert (len(small.train), len(small.val), len(small.test)) == (100, 10, 10000)
    assert small.train.images.data_ptr() == mnist.train.images.data_ptr()
    assert small.mean == mnist.mean and small.input_shape == mnist.input_shape
    with pytest.raises(ConfigError):
        mnist.train.subset(-1)


def test_split_rejects_wrong_dtypes() -> None:
    with pytest.raises(DataError, match="uint8"):
        Split(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(DataError, match="int64"):
        Split(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))


# --------------------------------------------------------------------------- the IDX reader

def test_read_idx_uncompressed_and_int32(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    raw = write(tmp_path / "x-idx3-ubyte", idx_bytes(images), compress=False)
    assert np.array_equal(read_idx(raw, expected_dims=3, expected_count=2), images)
    ints = np.array([[-5, 70000], [1, 2]])
    out = read_idx(write(tmp_path / "i.gz", idx_bytes(ints, 0x0C)))
    assert out.dtype == np.int32 and out.dtype.isnative and np.array_equal(out, ints)
    assert out.flags.writeable


def test_read_idx_truncated_gzip_of_real_file(tmp_path: Path, data_root: Path) -> None:
    blob = (data_root / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as excinfo:
        read_idx(bad, expected_dims=1)
    message = one_line_error(excinfo)
    assert str(bad) in message and "truncated" in message


def test_read_idx_crc_error(tmp_path: Path, data_root: Path) -> None:
    blob = bytearray((data_root / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    blob[-8] ^= 0xFF  # first byte of the CRC32 in the gzip trailer
    bad = tmp_path / "labels.gz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"corrupt gzip.*CRC") as excinfo:
        read_idx(bad)
    one_line_error(excinfo)


def test_read_idx_wrong_magic(tmp_path: Path) -> None:
    path = write(tmp_path / "train-images-idx3-ubyte.gz", b"\x00" * 64)
    with pytest.raises(DataError) as excinfo:
        read_idx(path, expected_dims=3)
    message = one_line_error(excinfo)
    assert message.startswith(str(path))
    assert "wrong magic number 0x00000000" in message and "0x00000803" in message
    labels = write(tmp_path / "labels.gz", idx_bytes(np.arange(5)))
    with pytest.raises(DataError, match="has 1 dimensions, expected 3"):
        read_idx(labels, expected_dims=3)
    with pytest.raises(DataError, match="has 5 items, expected 6"):
        read_idx(labels, expected_count=6)


def test_read_idx_payload_size_mismatch(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((10, 2, 2)))
    short = write(tmp_path / "short.gz", good[:-10])
    with pytest.raises(DataError) as excinfo:
        read_idx(short)
    assert "truncated: header says 10x2x2 = 40 bytes of data, file has 30" in one_line_error(excinfo)
    long = write(tmp_path / "long.gz", good + b"\x01\x02\x03")
    with pytest.raises(DataError, match="3 unexpected trailing bytes"):
        read_idx(long)
    header_only = write(tmp_path / "hdr.gz", good[:6])
    with pytest.raises(DataError, match="truncated header"):
        read_idx(header_only)


def test_read_idx_garbage_and_missing(tmp_path: Path) -> None:
    garbage = write(tmp_path / "train-images-idx3-ubyte.gz", b"<html>not found</html>", compress=False)
    with pytest.raises(DataError, match="not a gzip file") as excinfo:
        read_idx(garbage)
    one_line_error(excinfo)
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope.gz")
    bad_stream = tmp_path / "bad.gz"
    bad_stream.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage-deflate-data" * 3)
    with pytest.raises(DataError, match=r"bad\.gz"):
        read_idx(bad_stream)


# --------------------------------------------------------------------------- validation and lookup

def test_images_labels_count_mismatch(tmp_path: Path, isolated: Path) -> None:
    folder = fake_mnist(tmp_path / "mnist", n_train=6, n_train_labels=4)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", folder, download=False)
    message = one_line_error(excinfo)
    assert "train-images-idx3-ubyte.gz has 6 images" in message
    assert "train-labels-idx1-ubyte.gz has 4 labels" in message


def test_official_counts_and_label_range_are_checked(tmp_path: Path, isolated: Path) -> None:
    folder = fake_mnist(tmp_path / "a" / "mnist")
    with pytest.raises(DataError, match="has 6 items, the official training set has 60000"):
        load_dataset("mnist", folder, download=False)
    raw = data_mod._load_idx_dataset(DATASETS.get("mnist"), {n: folder / n for n in MNIST_FILES})
    spec = DATASETS.get("mnist")
    bad_labels = raw.train_labels.copy()
    bad_labels[0] = 10
    with pytest.raises(DataError, match=r"label 10, outside 0\.\.9"):
        data_mod._check_pair(spec, "training", raw.train_images, bad_labels, raw.sources[:2], 6)


def test_missing_files_without_download_lists_searched_folders(tmp_path: Path, isolated: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECATEUR_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path / "given", download=False)
    message = one_line_error(excinfo)
    expected = [tmp_path / "given", tmp_path / "given" / "mnist", tmp_path / "env" / "mnist",
                isolated / ".cache" / "secateur" / "mnist", tmp_path / "system" / "mnist"]
    assert search_dirs("mnist", tmp_path / "given") == expected
    for folder in expected:
        assert str(folder) in message
    for name in MNIST_FILES:
        assert name in message


def test_lookup_order(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DATASETS.get("mnist")
    cache = fake_mnist(isolated / ".cache" / "secateur" / "mnist")
    assert data_mod._locate(spec, None, download=False)[MNIST_FILES[0]].parent == cache
    env = fake_mnist(tmp_path / "env" / "mnist")
    monkeypatch.setenv("SECATEUR_DATA", str(tmp_path / "env"))  # read at call time
    assert data_mod._locate(spec, None, download=False)[MNIST_FILES[0]].parent == env
    given = fake_mnist(tmp_path / "given" / "mnist")
    assert data_mod._locate(spec, tmp_path / "given", download=False)[MNIST_FILES[0]].parent == given
    assert data_mod._locate(spec, given, download=False)[MNIST_FILES[0]].parent == given
    # An uncompressed copy is accepted too.
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in MNIST_FILES:
        (plain / name.removesuffix(".gz")).write_bytes(gzip.decompress((given / name).read_bytes()))
    assert data_mod._locate(spec, plain, download=False)[MNIST_FILES[1]] == plain / "train-labels-idx1-ubyte"


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(UnknownNameError) as excinfo:
        load_dataset("imagenet")
    message = one_line_error(excinfo)
    for name in ("mnist", "fashion-mnist", "cifar10", "digits"):
        assert name in message
    assert {"cifar10", "digits", "fashion-mnist", "mnist"} <= set(DATASETS.names())


def test_digits_loads_offline(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod, "_urlopen", lambda *a, **k: pytest.fail("digits must not download"))
    digits = load_dataset("digits")
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1238, 200, 359)
    assert digits.input_shape == (1, 8, 8) and digits.train.images.dtype == torch.uint8
    assert int(digits.train.images.max()) == 255
    every = torch.cat([digits.train.labels, digits.val.labels, digits.test.labels])
    assert torch.bincount(every).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert torch.equal(load_dataset("digits").test.images, digits.test.images)


# --------------------------------------------------------------------------- download

def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_good_md5_lands_atomically(tmp_path: Path, data_root: Path) -> None:
    source = data_root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    dest = tmp_path / "cache" / source.name
    urls = [(tmp_path / "missing.gz").as_uri(), source.as_uri()]  # first mirror fails, second works
    data_mod._download_file(urls, dest, "ec29112dd5afa0611ce80d1b7f02629c")
    assert md5_of(dest) == "ec29112dd5afa0611ce80d1b7f02629c"
    assert sorted(p.name for p in dest.parent.iterdir()) == [source.name]  # no temp file left


def test_download_bad_md5_leaves_nothing(tmp_path: Path, data_root: Path) -> None:
    source = data_root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    dest = tmp_path / "cache" / source.name
    with pytest.raises(DataError, match="does not match the official") as excinfo:
        data_mod._download_file([source.as_uri()], dest, "0" * 32)
    one_line_error(excinfo)
    assert list(dest.parent.iterdir()) == []


def test_load_dataset_downloads_into_cache(tmp_path: Path, data_root: Path, isolated: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_urlopen(url: str, timeout: float):
        seen.append(url)
        name = url.rsplit("/", 1)[-1]
        return open((data_root / "mnist" / name), "rb") if url.startswith("https://") else pytest.fail(url)

    monkeypatch.setattr(data_mod, "_urlopen", fake_urlopen)
    dataset = load_dataset("mnist", val_size=10)
    cache = isolated / ".cache" / "secateur" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_FILES)
    assert seen == [f"https://ossci-datasets.s3.amazonaws.com/mnist/{n}" for n in MNIST_FILES]
    assert len(dataset.train) == 59990 and len(dataset.test) == 10000


def test_debian_dataset_folder_is_found_last(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float):
        raise AssertionError("no download when /usr/share/datasets has the files")

    monkeypatch.setattr(data_mod, "_urlopen", offline)
    spec = DATASETS.get("mnist")
    system = fake_mnist(tmp_path / "system" / "mnist")  # where Debian's dataset-<name> packages install
    assert search_dirs("mnist")[-1] == system
    assert data_mod._locate(spec, None, download=True)[MNIST_FILES[0]].parent == system
    cache = fake_mnist(isolated / ".cache" / "secateur" / "mnist")  # every other place comes first
    assert data_mod._locate(spec, None, download=True)[MNIST_FILES[0]].parent == cache


def test_offline_download_failure_says_where_to_put_files(tmp_path: Path, isolated: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data_mod, "_urlopen", offline)
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist")
    message = one_line_error(excinfo)
    cache = isolated / ".cache" / "secateur" / "fashion-mnist"
    assert "network is unreachable" in message and str(cache) in message
    assert "fashion-mnist.s3-website" in message
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------- batches

def test_batches_normalise_and_cover_everything() -> None:
    images = torch.arange(5 * 2 * 2 * 2, dtype=torch.uint8).reshape(5, 2, 2, 2)
    split = Split(images, torch.arange(5))
    mean, std = (0.1, 0.5), (0.2, 0.4)
    out = list(batches(split, 2, mean=mean, std=std))
    assert [len(y) for _, y in out] == [2, 2, 1]
    x = torch.cat([b for b, _ in out])
    expected = (images.double() / 255 - torch.tensor(mean).view(1, 2, 1, 1)) / torch.tensor(std).view(1, 2, 1, 1)
    assert x.dtype == torch.float32 and torch.allclose(x.double(), expected, atol=1e-5)
    assert torch.cat([y for _, y in out]).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        next(batches(split, 0, mean=mean, std=std))
    with pytest.raises(ConfigError, match="one per channel"):
        next(batches(split, 2, mean=(0.1,), std=(0.2,)))


def test_batches_shuffle_is_seeded() -> None:
    split = Split(torch.zeros(50, 1, 1, 1, dtype=torch.uint8), torch.arange(50))

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in batches(split, 8, mean=(0.0,), std=(1.0,), shuffle=True,
                                                generator=gen)]).tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == list(range(50)) and order(3) != list(range(50))


# --------------------------------------------------------------------------- cifar10 (binary)

def fake_cifar(path: Path, per_batch: int = 2, n_test: int = 3, drop: str | None = None,
               record_bytes: int = 3073) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tiny archive with the real cifar-10-binary.tar.gz layout; returns (path, images, labels)."""
    rng = np.random.default_rng(1)
    n = 5 * per_batch + n_test
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)[:, :record_bytes]
    members = {f"cifar-10-batches-bin/data_batch_{i + 1}.bin": records[i * per_batch:(i + 1) * per_batch]
               for i in range(5)}
    members["cifar-10-batches-bin/test_batch.bin"] = records[5 * per_batch:]
    members["cifar-10-batches-bin/batches.meta.txt"] = np.frombuffer(b"airplane\n", dtype=np.uint8)
    with tarfile.open(path, "w:gz") as tar:
        for name, array in members.items():
            if name.endswith(drop or "\0"):
                continue
            info = tarfile.TarInfo(name)
            info.size = array.nbytes
            tar.addfile(info, io.BytesIO(array.tobytes()))
    return path, images, labels


def test_cifar_binary_parser(tmp_path: Path) -> None:
    path, images, labels = fake_cifar(tmp_path / "cifar-10-binary.tar.gz")
    raw = data_mod._read_cifar_archive(path)
    assert raw.train_images.shape == (10, 3, 32, 32) and raw.test_images.shape == (3, 3, 32, 32)
    assert np.array_equal(raw.train_images, images[:10]) and np.array_equal(raw.test_images, images[10:])
    assert np.array_equal(raw.train_labels, labels[:10]) and np.array_equal(raw.test_labels, labels[10:])
    assert raw.train_images[4, 1, 2, 3] == images[4].reshape(-1)[1024 + 2 * 32 + 3]  # CHW layout


def test_cifar_archive_errors(tmp_path: Path, isolated: Path) -> None:
    folder = tmp_path / "cifar10"
    folder.mkdir()
    path, _, _ = fake_cifar(folder / "cifar-10-binary.tar.gz")
    with pytest.raises(DataError, match="has 10 items, the official training set has 50000"):
        load_dataset("cifar10", folder, download=False)
    missing, _, _ = fake_cifar(tmp_path / "m.tar.gz", drop="data_batch_3.bin")
    with pytest.raises(DataError, match=r"lacks cifar-10-batches-bin/data_batch_3\.bin"):
        data_mod._read_cifar_archive(missing)
    ragged, _, _ = fake_cifar(tmp_path / "r.tar.gz", record_bytes=3000)
    with pytest.raises(DataError, match="not a multiple of the 3073-byte record size"):
        data_mod._read_cifar_archive(ragged)
    truncated = tmp_path / "t.tar.gz"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"cannot read the tar\.gz archive") as excinfo:
        data_mod._read_cifar_archive(truncated)
    one_line_error(excinfo)
