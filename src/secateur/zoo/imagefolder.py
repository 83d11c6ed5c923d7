"""``imagefolder:PATH``: your own images, in torchvision's ``ImageFolder`` layout, as a secateur dataset.

``PATH`` holds one subfolder per class (``PATH/cat/1.png``, ``PATH/dog/2.jpg``); the classes
are the subfolders' names in sorted order. If ``PATH`` has ``train/`` (and ``test/`` and / or
``val/``) subfolders, those are the splits, each in that layout; a missing test split is
carved out of the training images (a fifth, seeded), and a missing validation split too (a
tenth of what is left, seeded by ``load_dataset``'s ``seed``). Images are read with Pillow,
resized to a fixed ``SIZE`` x ``SIZE`` (default 32; ``imagefolder:PATH@64`` for 64) and kept in
memory as uint8, grey if the first image is grey, else RGB; so the whole pipeline (``secateur
train`` / ``prune``, the report) works on them as on MNIST. One registry pattern in
:data:`~secateur.zoo.data.DATASETS`, so the CLI, a recipe and the API all take the same name.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from secateur.errors import DataError
from secateur.zoo.data import DATASETS, DatasetSpec, RawArrays

DEFAULT_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
TEST_FRACTION = 0.2  # of the images, when the folder has no test/ split
VAL_FRACTION = 0.1  # of the training images, when it has no val/ split
MAX_SIZE = 1024


def image_folder_spec(path: str, size: int = DEFAULT_SIZE) -> DatasetSpec:
    """The dataset spec of the image folder ``path`` (nothing is read until it is loaded)."""
    name = f"imagefolder:{path}" + ("" if size == DEFAULT_SIZE else f"@{size}")
    return DatasetSpec(name=name, description=f"images in {path}, resized to {size}x{size}", files=(), mirrors=(),
                       num_classes=None, shape=None, counts=None, val_size=VAL_FRACTION,
                       loader=lambda spec, paths: read_image_folder(Path(path), size))


def _from_match(match: re.Match[str]) -> DatasetSpec:
    size = int(match["size"]) if match["size"] else DEFAULT_SIZE
    if not 1 <= size <= MAX_SIZE:
        raise DataError(f"imagefolder size must be in 1..{MAX_SIZE}, got {size}")
    return image_folder_spec(match["path"], size)


DATASETS.add_pattern("imagefolder:path", r"imagefolder:(?P<path>.+?)(?:@(?P<size>[0-9]+))?", _from_match,
                     example="imagefolder:images",
                     help="your images, one subfolder per class (train/ test/ val/ optional); @SIZE resizes "
                          f"(default {DEFAULT_SIZE})")


def read_image_folder(root: Path, size: int) -> RawArrays:
    """Train / test (and val, if the folder has one) arrays of an image folder."""
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a folder; give a folder with one subfolder per class")
    split_root = root / "train" if (root / "train").is_dir() else root
    classes = _classes(split_root)
    mode = _mode(split_root, classes)
    train_x, train_y = _read_split(split_root, classes, size, mode)
    test_dir, val_dir = root / "test", root / "val"
    if split_root is root or not test_dir.is_dir():
        train_x, train_y, test_x, test_y = _carve(train_x, train_y, TEST_FRACTION)
        test_source = f"{split_root} (a seeded {TEST_FRACTION:.0%})"
    else:
        test_x, test_y = _read_split(test_dir, classes, size, mode)
        test_source = str(test_dir)
    val = _read_split(val_dir, classes, size, mode) if split_root is not root and val_dir.is_dir() else (None, None)
    sources = (str(split_root), str(split_root), test_source, test_source)
    return RawArrays(train_x, train_y, test_x, test_y, sources, val[0], val[1], len(classes))


def _classes(folder: Path) -> list[str]:
    """The class subfolders' names, sorted (hidden folders skipped)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"imagefolder: {folder} has no class subfolders; put each class's images in "
                        f"{folder}/<class>/")
    return classes


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _mode(folder: Path, classes: list[str]) -> str:
    """``"L"`` if the first image is grey, else ``"RGB"``: every image is converted to it."""
    from PIL import Image  # lazy: only image folders need Pillow (a dependency of torchvision)

    for name in classes:
        for file in _files(folder / name):
            with Image.open(file) as image:
                return "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    raise DataError(f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")


def _read_split(folder: Path, classes: list[str], size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, C, size, size)`` and labels of one split (its class subfolders)."""
    from PIL import Image, UnidentifiedImageError

    extra = sorted(set(_classes(folder)) - set(classes))
    if extra:
        raise DataError(f"imagefolder: {folder} has classes {', '.join(extra)} that the training images lack")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in _files(folder / name) if (folder / name).is_dir() else []:
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert(mode).resize((size, size), Image.Resampling.BILINEAR))
            except (OSError, UnidentifiedImageError) as err:
                raise DataError(f"imagefolder: cannot read {file} ({err}); remove or replace it") from None
            images.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.int64)


def _carve(images: np.ndarray, labels: np.ndarray, fraction: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, labels, held-out images, labels): a seeded ``fraction`` held out (at least 1)."""
    if len(labels) < 3:
        raise DataError(f"imagefolder: {len(labels)} images are too few to split into train, validation and test")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).numpy()
    held = max(1, round(fraction * len(labels)))
    keep, out = np.sort(order[held:]), np.sort(order[:held])
    return images[keep], labels[keep], images[out], labels[out]
