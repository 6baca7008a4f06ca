"""CIFAR-10 from torchvision's ``cifar-10-batches-py`` folder, read with a restricted unpickler.

Layout: ``<root>/cifar-10-batches-py/`` holding ``data_batch_1`` .. ``data_batch_5``,
``test_batch`` and ``batches.meta`` (the official python version). Each batch is a pickled dict
with ``data`` (N x 3072 uint8: 1024 red, 1024 green, 1024 blue values, row-major 32 x 32) and
``labels`` (N ints); ``batches.meta`` holds ``label_names``. The official test batch is the
test pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import DataParams
from pipeline.core.errors import first_line
from pipeline.core.reading import open_regular
from pipeline.prepared.types import LabelledImages, SourceData
from pipeline.sources import torchvision_files
from pipeline.sources.errors import DataSourceError
from pipeline.sources.safe_pickle import load_array_dict

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
NUM_CLASSES = 10
SIDE = 32


def read_pickle_dict(path: Path) -> dict[str, Any]:
    """The batch as a dict, or a one-line DataSourceError; a hostile file runs nothing."""
    try:
        with open_regular(path) as handle:  # a pipe put there in the meantime fails, not blocks
            return load_array_dict(handle)
    except Exception as error:  # any failure of an untrusted stream is the file's fault
        raise DataSourceError(
            f"{path}: not a CIFAR-10 python batch ({first_line(error)})"
        ) from None


def read_batch(path: Path) -> LabelledImages:
    batch = read_pickle_dict(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataSourceError(f"{path}: 'data' is not an N x 3072 uint8 array")
    if data.shape[1] != 3 * SIDE * SIDE:
        raise DataSourceError(f"{path}: 'data' rows hold {data.shape[1]} values, expected 3072")
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise DataSourceError(f"{path}: 'labels' is not a list of ints")
    label_array = np.asarray(labels, dtype=np.int64)
    if len(label_array) != len(data):
        raise DataSourceError(f"{path}: {len(data)} images but {len(label_array)} labels")
    if label_array.size and (label_array.min() < 0 or label_array.max() >= NUM_CLASSES):
        raise DataSourceError(f"{path}: labels outside 0..{NUM_CLASSES - 1}")
    return LabelledImages(data.reshape(-1, 3, SIDE, SIDE), label_array)


def read_class_names(path: Path) -> list[str]:
    names = read_pickle_dict(path).get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataSourceError(f"{path}: 'label_names' is not a list of {NUM_CLASSES} names")
    if not all(isinstance(name, (str, bytes)) for name in names):
        raise DataSourceError(f"{path}: 'label_names' holds something other than names")
    return [name.decode("latin1") if isinstance(name, bytes) else name for name in names]


def _download(root: Path) -> None:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    # torchvision's archive URL and md5, but not CIFAR10(download=True): that would then load
    # the batches with a plain pickle.load, which this project never does.
    download_and_extract_archive(
        CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
    )


def load(params: DataParams) -> SourceData:
    root = Path(params.root)
    names = [f"{FOLDER}/{name}" for name in [*TRAIN_BATCHES, TEST_BATCH, META]]
    files = torchvision_files.locate(
        "cifar10",
        root,
        names,
        compressed_ok=False,
        download=params.download,
        downloader=_download,
    )
    train_parts = [read_batch(files[f"{FOLDER}/{name}"]) for name in TRAIN_BATCHES]
    train = LabelledImages(
        np.concatenate([part.images for part in train_parts]),
        np.concatenate([part.labels for part in train_parts]),
    )
    test = read_batch(files[f"{FOLDER}/{TEST_BATCH}"])
    return SourceData(
        name="cifar10",
        pools={"train": train, "test": test},
        class_names=read_class_names(files[f"{FOLDER}/{META}"]),
        input_hashes=torchvision_files.file_hashes(root, files),
        files_seen=len(train) + len(test),
    )
