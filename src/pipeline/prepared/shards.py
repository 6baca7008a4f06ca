"""Sharded prepared data: every split as uint8 safetensors shards, and the one reader of them.

A split is written as ``<split>-00000.safetensors``, ``<split>-00001.safetensors``, ... each
holding at most ``data.shard_images`` images (``images``: uint8 NCHW, ``labels``: int64), and
meta.json lists every shard's file, image count and sha256 under ``shards``. A split that
spans several shards is written in a seeded shuffled order, so each shard holds a mix of
classes and a reader that shuffles only within a window of shards still sees every class; a
one-shard split keeps the source's order (the embedded default's bytes do not move).

Reading checks each shard before touching its data: a regular file (a symbolic link only into
the project's DVC cache, wherever DVC's config puts it), the safetensors header (truncation),
the tensors' dtype and shape against meta.json, the count against the index and, when asked,
the sha256 (once per prepared folder: pipeline.prepared.verified). Data is read through a memory
map that lives only while one shard is copied out, so a reader holds at most the shards it
was asked for, never the whole split.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save as save_numpy_bytes

from pipeline.core.errors import PipelineError
from pipeline.core.headers import TensorFileError, read_header
from pipeline.core.io import sha256_bytes, sha256_file, write_bytes
from pipeline.core.progress import Progress
from pipeline.prepared.links import links_into_dvc_cache
from pipeline.prepared.stats import histogram_stats, pixel_histogram
from pipeline.prepared.types import Images, Quarantined, decode_rows
from pipeline.prepared.verified import verify_once

SHARDS_KEY = "shards"  # meta.json: split -> [{"file", "count", "sha256"}, ...]


class ShardError(PipelineError):
    """A prepared shard that is missing, linked, truncated or not what meta.json says."""


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}.safetensors"


@dataclass(frozen=True)
class ShardEntry:
    file: str
    count: int
    sha256: str


class ShardWriter:
    """Collects rows and writes a shard each time ``shard_images`` of them are in; holds one
    shard's worth of rows at most. Also counts pixel values per channel (the train split's stats)
    and counts labels."""

    def __init__(self, out_dir: str | Path, split: str, shard_images: int) -> None:
        self.out_dir, self.split, self.shard_images = Path(out_dir), split, shard_images
        self.entries: list[ShardEntry] = []
        self._images: np.ndarray | None = None
        self._labels = np.empty(shard_images, np.int64)
        self._filled = 0
        self.histogram: np.ndarray | None = None  # per channel: counts of each value
        self.label_counts = np.zeros(0, np.int64)

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        if self._images is None:
            self._images = np.empty((self.shard_images, *images.shape[1:]), np.uint8)
            self.histogram = np.zeros((images.shape[1], 256), np.int64)
        self._accumulate(images, labels)
        done = 0
        while done < len(images):
            take = min(self.shard_images - self._filled, len(images) - done)
            self._images[self._filled : self._filled + take] = images[done : done + take]
            self._labels[self._filled : self._filled + take] = labels[done : done + take]
            self._filled, done = self._filled + take, done + take
            if self._filled == self.shard_images:
                self._flush()

    def _accumulate(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.histogram += pixel_histogram(images)
        counts = np.bincount(labels, minlength=len(self.label_counts))
        counts[: len(self.label_counts)] += self.label_counts
        self.label_counts = counts

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std on the 0..1 scale, of every row added (no second pass)."""
        return histogram_stats(self.histogram)

    def _flush(self) -> None:
        assert self._images is not None
        name = shard_name(self.split, len(self.entries))
        data = save_numpy_bytes(
            {"images": self._images[: self._filled], "labels": self._labels[: self._filled]}
        )
        write_bytes(self.out_dir / name, data)
        self.entries.append(ShardEntry(name, self._filled, sha256_bytes(data)))
        self._filled = 0

    def close(self) -> list[ShardEntry]:
        if self._filled or not self.entries:
            if self._images is None:
                raise ShardError(f"split {self.split!r} has no images to write")
            self._flush()
        return self.entries


@dataclass(frozen=True)
class WrittenSplit:
    """What writing one split produced: its shards, and what the meta needs of them."""

    entries: list[ShardEntry]
    image_shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    label_counts: np.ndarray  # images per class label
    failed: list[Quarantined]  # rows of a lazy source that did not decode

    @property
    def count(self) -> int:
        return sum(entry.count for entry in self.entries)


def write_split(
    out_dir: str | Path,
    split: str,
    images: Images,
    labels: np.ndarray,
    shard_images: int,
    seed: int,
) -> WrittenSplit:
    """Write a split through the shard writer, one shard's worth of rows read (or decoded) at
    a time; in a seeded shuffled order when it spans several shards. Rows that fail to decode
    are left out and returned as quarantined."""
    writer = ShardWriter(out_dir, split, shard_images)
    order = None
    if len(images) > shard_images:
        order = np.random.default_rng(seed).permutation(len(images))
    failed: list[Quarantined] = []
    with Progress(len(images), f"prepare {split}", unit="image") as bar:
        for start in range(0, len(images), shard_images):
            rows = (
                slice(start, start + shard_images)
                if order is None
                else order[start:][:shard_images]
            )
            decoded, chosen = decode_rows(images, rows), labels[rows]
            writer.add(decoded.images, chosen[decoded.kept])
            failed += decoded.failed
            bar.update(len(chosen))
    entries = writer.close()
    mean, std = writer.channel_stats()
    shape = tuple(int(size) for size in images.shape[1:])
    return WrittenSplit(entries, shape, mean, std, writer.label_counts, failed)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardFile:
    path: Path
    count: int
    sha256: str
    images_start: int
    labels_start: int


def _check_file(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except OSError:
        raise ShardError(f"{path}: shard listed in meta.json is missing; re-run prepare") from None
    if stat.S_ISLNK(mode):  # before any read (hashing included) goes through it
        if not links_into_dvc_cache(path):
            raise ShardError(
                f"{path} is a symbolic link to {os.readlink(path)}; shards are read only as "
                "files in the prepared folder (or links into its DVC cache, see dvc cache dir)"
            )
        mode = path.resolve().stat().st_mode
    if not stat.S_ISREG(mode):
        raise ShardError(f"{path} is not a regular file")


def _expect(path: Path, found: Any, expected: Any, what: str) -> None:
    if found != expected:
        raise ShardError(f"{path}: {what} is {found}, meta.json says {expected}")


def check_shard(path: Path, entry: ShardEntry, image_shape: tuple[int, ...]) -> ShardFile:
    """One shard's file, header and index entry, checked against each other and meta.json."""
    _check_file(path)
    try:
        header = read_header(path)
    except TensorFileError as error:
        raise ShardError(str(error)) from None
    _expect(path, sorted(header), ["images", "labels"], "tensor names")
    images, labels = header["images"], header["labels"]
    count = entry.count
    _expect(path, (images.dtype, images.shape), ("U8", (count, *image_shape)), "images")
    _expect(path, (labels.dtype, labels.shape), ("I64", (count,)), "labels")
    return ShardFile(path, count, entry.sha256, images.start, labels.start)


def _check_index(entries: Sequence[ShardEntry], split: str) -> None:
    """Field types are meta.json's reader's job (PreparedMeta); here: present, named in order."""
    if not entries:
        raise ShardError(
            f"meta.json lists no shards for split {split!r} (prepared by an older version?); "
            "re-run prepare"
        )
    for number, entry in enumerate(entries):
        if entry.file != shard_name(split, number) or entry.count < 0:
            raise ShardError(f"meta.json: shard {number} of split {split!r} is malformed: {entry}")


class SplitShards:
    """One split's checked shards; reads one shard at a time or the whole split at once."""

    def __init__(self, name: str, shards: list[ShardFile], image_shape, num_classes: int):
        self.name, self.shards = name, shards
        self.image_shape, self.num_classes = tuple(image_shape), num_classes

    @property
    def count(self) -> int:
        return sum(shard.count for shard in self.shards)

    @property
    def image_bytes(self) -> int:
        return int(np.prod(self.image_shape))

    def verify(self) -> list[str]:
        """Every shard's sha256, checked against the index (one read pass, chunked) once per
        prepared folder: a shard unchanged since an earlier check is not hashed again
        (pipeline.prepared.verified)."""

        def check(path: Path, expected: str) -> None:
            found = sha256_file(path)
            if found != expected:
                raise ShardError(
                    f"{path}: sha256 {found[:12]}... differs from meta.json's "
                    f"{expected[:12]}... (changed after prepare); re-run prepare"
                )

        if self.shards:
            pairs = [(shard.path, shard.sha256) for shard in self.shards]
            verify_once(self.shards[0].path.parent, pairs, check)
        return [shard.sha256 for shard in self.shards]

    def read_into(self, number: int, images: np.ndarray, labels: np.ndarray) -> None:
        """Copy shard ``number`` into the first rows of ``images``/``labels``."""
        shard = self.shards[number]
        if shard.count == 0:
            return
        mapped = np.memmap(shard.path, np.uint8, "r", shard.images_start,
                           (shard.count, *self.image_shape))  # fmt: skip
        images[: shard.count] = mapped
        del mapped  # unmap: its pages stop counting against this process
        found = np.memmap(shard.path, np.int64, "r", shard.labels_start, (shard.count,))
        labels[: shard.count] = found
        del found
        bad = (labels[: shard.count] < 0) | (labels[: shard.count] >= self.num_classes)
        if bad.any():
            value = int(labels[: shard.count][bad][0])
            raise ShardError(
                f"{shard.path}: label {value} is outside 0..{self.num_classes - 1} (meta.json "
                "classes)"
            )

    def rows(self, index: np.ndarray) -> np.ndarray:
        """The images at sorted split rows ``index``: only the pages holding them are read."""
        out = np.empty((len(index), *self.image_shape), np.uint8)
        start = done = 0
        for shard in self.shards:
            end = start + shard.count
            mine = index[(index >= start) & (index < end)] - start
            if len(mine):
                mapped = np.memmap(shard.path, np.uint8, "r", shard.images_start,
                                   (shard.count, *self.image_shape))  # fmt: skip
                out[done : done + len(mine)] = mapped[mine]
                del mapped
                done += len(mine)
            start = end
        return out

    def head(self, count: int) -> np.ndarray:
        """The first ``count`` images (all, when the split holds fewer)."""
        return self.rows(np.arange(min(count, self.count)))

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for number, shard in enumerate(self.shards):
            images = np.empty((shard.count, *self.image_shape), np.uint8)
            labels = np.empty(shard.count, np.int64)
            self.read_into(number, images, labels)
            yield images, labels

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory (small data): one array, filled shard by shard."""
        images = np.empty((self.count, *self.image_shape), np.uint8)
        labels = np.empty(self.count, np.int64)
        row = 0
        for number, shard in enumerate(self.shards):
            self.read_into(number, images[row:], labels[row:])
            row += shard.count
        return images, labels

    def load_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.load()
        return torch.from_numpy(images), torch.from_numpy(labels)


def open_split(
    prepared_dir: str | Path,
    split: str,
    entries: Sequence[ShardEntry],
    image_shape: Sequence[int],
    num_classes: int,
    expected_count: int | None,
    verify: bool = True,
) -> SplitShards:
    """Check every shard of ``split`` against its index entries and meta.json's image shape and
    count (and each shard's sha256 when ``verify``)."""
    folder = Path(prepared_dir)
    image_shape = tuple(image_shape)
    _check_index(entries, split)
    shards = [check_shard(folder / entry.file, entry, image_shape) for entry in entries]
    found = sum(shard.count for shard in shards)
    if expected_count != found:
        raise ShardError(
            f"{folder}: split {split!r} shards hold {found} images, counts say {expected_count}"
        )
    opened = SplitShards(split, shards, image_shape, num_classes)
    if verify:
        opened.verify()
    return opened
