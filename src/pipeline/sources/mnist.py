"""MNIST and Fashion-MNIST from torchvision's raw IDX files, parsed with struct and numpy.

Layout: ``<root>/MNIST/raw/`` or ``<root>/FashionMNIST/raw/`` holding
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (each may be the ``.gz`` torchvision downloads). The official test
split (t10k) is the test pool.

A header is checked against the file before its data is read: the byte count it claims must be
what the file holds (a ``.gz`` file: at most what its size can decompress to, and the data is
read in chunks, so memory follows the bytes really there), with at least one image of at least
``MIN_SIDE`` pixels a side; train and test images must share one size.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.core.config import DataParams
from pipeline.core.errors import first_line
from pipeline.core.reading import open_regular
from pipeline.prepared.types import LabelledImages, SourceData
from pipeline.sources import torchvision_files
from pipeline.sources.errors import DataSourceError

IDX_UBYTE = 0x08
MAX_ITEMS = 10_000_000  # far above any MNIST variant; refuses absurd headers before reading
MAX_DATA_BYTES = 1 << 33  # 8 GiB: MAX_ITEMS images of 28x28 fit; a gzip bomb's claim does not
MAX_SIDE = 1024
MIN_SIDE = 2  # a 1-pixel side holds no picture; real IDX images are 28x28
# Deflate cannot compress better than about 1032:1, so a .gz file's size bounds the data it
# can hold without decompressing it.
MAX_DEFLATE_RATIO = 1032
CHUNK_BYTES = 1 << 24

FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
CLASS_NAMES = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(side) for side in shape)


def _check_size(path: Path, shape: tuple[int, ...], stored: int, gz: bool) -> int:
    """The data's byte count as the header claims it, if the file can hold that many bytes:
    a raw file exactly (its size on disk), a gzip one at most ``MAX_DEFLATE_RATIO`` times its
    size. Checked before anything is allocated: a lying header must not cost the memory."""
    claimed = math.prod(shape)
    header = 4 + 4 * len(shape)
    claims = f"{path}: header claims shape {_shape_text(shape)} ({claimed} bytes of data)"
    if not gz and claimed != stored - header:
        raise DataSourceError(
            f"{claims} but the file holds {stored - header} bytes after its {header}-byte header"
        )
    if gz and header + claimed > stored * MAX_DEFLATE_RATIO:
        raise DataSourceError(
            f"{claims} but its {stored} compressed bytes decompress to at most "
            f"{stored * MAX_DEFLATE_RATIO}"
        )
    return claimed


def _check_shape(path: Path, shape: tuple[int, ...]) -> None:
    sides = shape[1:]
    if shape[0] == 0:
        raise DataSourceError(f"{path}: IDX file holds no items (shape {_shape_text(shape)})")
    too_many = shape[0] > MAX_ITEMS or math.prod(shape) > MAX_DATA_BYTES
    if too_many or any(side > MAX_SIDE for side in sides):
        raise DataSourceError(f"{path}: implausible IDX shape {_shape_text(shape)}")
    if any(side < MIN_SIDE for side in sides):
        raise DataSourceError(
            f"{path}: images of {_shape_text(sides)} pixels (IDX shape {_shape_text(shape)}); "
            f"each side must be at least {MIN_SIDE}"
        )


def _read_exact(handle: BinaryIO, size: int, path: Path) -> bytearray:
    """``size`` bytes, read in chunks: memory grows only with the data really there."""
    data = bytearray()
    while len(data) < size and (chunk := handle.read(min(CHUNK_BYTES, size - len(data)))):
        data += chunk
    if len(data) != size:
        raise DataSourceError(f"{path}: truncated IDX file ({len(data)} of {size} bytes of data)")
    return data


def _parse(handle: BinaryIO, path: Path, ndim: int, stored: int, gz: bool) -> np.ndarray:
    zero, dtype, dims = struct.unpack(">HBB", _read_exact(handle, 4, path))
    if zero != 0 or dtype != IDX_UBYTE or dims != ndim:
        raise DataSourceError(
            f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s) "
            f"(header {zero:#06x} {dtype:#04x} {dims})"
        )
    shape = struct.unpack(f">{ndim}I", _read_exact(handle, 4 * ndim, path))
    size = _check_size(path, shape, stored, gz)
    _check_shape(path, shape)
    data = _read_exact(handle, size, path)
    if handle.read(1):
        raise DataSourceError(f"{path}: trailing bytes after the {_shape_text(shape)} IDX data")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file of ``ndim`` dimensions (1: labels, 3: images)."""
    gz = path.suffix == ".gz"
    try:
        with open_regular(path) as raw:  # a pipe in place of the file fails, never blocks
            stored = os.fstat(raw.fileno()).st_size
            if not gz:
                return _parse(raw, path, ndim, stored, gz)
            with gzip.GzipFile(fileobj=raw, mode="rb") as handle:
                return _parse(handle, path, ndim, stored, gz)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        reason = getattr(error, "strerror", None) or first_line(error)
        raise DataSourceError(f"{path}: unreadable ({reason})") from None


def _pool(files: dict[str, Path], split: str, num_classes: int) -> LabelledImages:
    image_name, label_name = SPLIT_FILES[split]
    images = read_idx(files[image_name], ndim=3)
    labels = read_idx(files[label_name], ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise DataSourceError(
            f"{files[image_name].parent}: {len(images)} {split} images but {len(labels)} labels"
        )
    if labels.size and labels.max() >= num_classes:
        raise DataSourceError(f"{files[label_name]}: label {labels.max()} >= {num_classes} classes")
    return LabelledImages(np.ascontiguousarray(images[:, None]), labels)


def _check_same_size(files: dict[str, Path], pools: dict[str, LabelledImages]) -> None:
    """Train and test images must share one size: the model takes one input shape."""
    sizes = {split: _shape_text(pool.images.shape[2:]) for split, pool in pools.items()}
    if sizes["train"] != sizes["test"]:
        train, test = (files[SPLIT_FILES[split][0]] for split in ("train", "test"))
        raise DataSourceError(
            f"{train.parent}: train images are {sizes['train']} ({train.name}) but test images "
            f"are {sizes['test']} ({test.name}); both splits must share one image size"
        )


def _download(source: str, root: Path) -> None:
    from torchvision import datasets  # imported only here: slow, and only online users need it

    dataset_class = datasets.MNIST if source == "mnist" else datasets.FashionMNIST
    # Fetches all four files (train and t10k), checks their md5 and unpacks them in raw/.
    dataset_class(root=str(root), train=True, download=True)


def load(params: DataParams) -> SourceData:
    source = params.source
    root = Path(params.root)
    folder = FOLDERS[source]
    names = [f"{folder}/raw/{name}" for pair in SPLIT_FILES.values() for name in pair]
    located = torchvision_files.locate(
        source,
        root,
        names,
        compressed_ok=True,
        download=params.download,
        downloader=lambda where: _download(source, where),
    )
    files = {name.rsplit("/", 1)[1]: path for name, path in located.items()}
    num_classes = len(CLASS_NAMES[source])
    pools = {split: _pool(files, split, num_classes) for split in SPLIT_FILES}
    _check_same_size(files, pools)
    return SourceData(
        name=source,
        pools=pools,
        class_names=list(CLASS_NAMES[source]),
        input_hashes=torchvision_files.file_hashes(root, located),
        files_seen=sum(len(pool) for pool in pools.values()),
    )
