"""What every data source hands to the split: labelled uint8 images and their provenance.

Images are an in-memory uint8 array, or ``LazyImages`` (a folder of files) that the split can
select rows of before a pixel is decoded: prepare then decodes one shard's worth at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Quarantined:
    """A file that could not be used, and why: listed in metrics/data.json, never silently lost."""

    path: str
    reason: str


@dataclass(frozen=True)
class Decoded:
    """Rows read from a source: the ones that decoded, where they stood, and the ones that
    did not (quarantined)."""

    images: np.ndarray  # uint8 NCHW, the usable rows in the order asked for
    kept: np.ndarray  # their positions among the rows asked for
    failed: list[Quarantined]


class LazyImages(Protocol):
    """Images not read yet: the same shape, ``dtype``, ``len`` and row selection as an array."""

    shape: tuple[int, int, int, int]
    dtype: np.dtype
    ndim: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: np.ndarray) -> LazyImages: ...

    def decode(self) -> Decoded: ...


Images = np.ndarray | LazyImages


def decode_rows(images: Images, rows: np.ndarray | slice) -> Decoded:
    """The pixels of ``rows``: a copy of an array's rows, or a lazy source decoded."""
    if isinstance(images, np.ndarray):
        chunk = np.ascontiguousarray(images[rows])
        return Decoded(chunk, np.arange(len(chunk)), [])
    return images[np.arange(len(images))[rows]].decode()


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images in NCHW layout with int64 labels.

    ``groups`` (optional) gives rows that must stay together (byte-identical files) one id;
    the split keeps each group in one split.
    """

    images: Images
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 NCHW, got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")
        if self.groups is not None and self.groups.shape != (len(self.images),):
            raise ValueError(f"{len(self.groups)} group ids for {len(self.images)} images")

    # LabelledChunks, for in-memory sets (tests, synthetic benchmarks): one chunk, the whole set.
    @property
    def count(self) -> int:
        return len(self.images)

    def head(self, count: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[:count])

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield np.asarray(self.images), self.labels

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> LabelledImages:
        groups = None if self.groups is None else self.groups[index]
        return LabelledImages(self.images[index], self.labels[index], groups)


class LabelledChunks(Protocol):
    """A split that export's parity check and the benchmark's accuracy passes read chunk by
    chunk: a prepared split's shards (``SplitShards``: memory flat in the split's size), or
    one in-memory ``LabelledImages``."""

    @property
    def count(self) -> int: ...

    def head(self, count: int) -> np.ndarray:
        """The first ``count`` images (fewer when the split is smaller), uint8 NCHW."""
        ...

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(uint8 NCHW images, int64 labels) chunks, in order, covering the split once."""
        ...


@dataclass(frozen=True)
class SourceData:
    """A loaded source.

    ``pools`` is either ``{"all": ...}`` (the split carves train, val and test out of it) or
    ``{"train": ..., "test": ...}`` for sources with an official test split.
    """

    name: str
    pools: dict[str, LabelledImages]
    class_names: list[str]
    input_hashes: dict[str, str] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)
    files_seen: int = 0
    # (file, the earlier byte-identical file); None when the source does not look for them.
    duplicates: list[tuple[str, str]] | None = None


# The prepared splits, in file order.
SPLITS = ("train", "val", "test")
