"""MNIST and Fashion-MNIST from torchvision's raw IDX files, parsed with struct and numpy.

Layout: ``<root>/MNIST/raw/`` or ``<root>/FashionMNIST/raw/`` holding
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (each may be the ``.gz`` torchvision downloads). The official test
split (t10k) is the test pool.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.core.config import DataParams
from pipeline.prepared.types import LabelledImages, SourceData
from pipeline.sources import torchvision_files
from pipeline.sources.errors import DataSourceError

IDX_UBYTE = 0x08
MAX_ITEMS = 10_000_000  # far above any MNIST variant; refuses absurd headers before reading
MAX_SIDE = 1024

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


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_exact(handle: BinaryIO, size: int, path: Path) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise DataSourceError(f"{path}: truncated IDX file ({len(data)} of {size} bytes of data)")
    return data


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file of ``ndim`` dimensions (1: labels, 3: images)."""
    try:
        with _open(path) as handle:
            zero, dtype, dims = struct.unpack(">HBB", _read_exact(handle, 4, path))
            if zero != 0 or dtype != IDX_UBYTE or dims != ndim:
                raise DataSourceError(
                    f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s) "
                    f"(header {zero:#06x} {dtype:#04x} {dims})"
                )
            shape = struct.unpack(f">{ndim}I", _read_exact(handle, 4 * ndim, path))
            if shape[0] > MAX_ITEMS or any(side > MAX_SIDE for side in shape[1:]):
                raise DataSourceError(f"{path}: implausible IDX shape {shape}")
            data = _read_exact(handle, int(np.prod(shape)), path)
            if handle.read(1):
                raise DataSourceError(f"{path}: trailing bytes after the {shape} IDX data")
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataSourceError(f"{path}: unreadable ({error})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


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
    return SourceData(
        name=source,
        pools=pools,
        class_names=list(CLASS_NAMES[source]),
        input_hashes=torchvision_files.file_hashes(root, located),
        files_seen=sum(len(pool) for pool in pools.values()),
    )
