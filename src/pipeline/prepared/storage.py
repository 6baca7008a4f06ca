"""The prepared-data contract: uint8 safetensors shards per split (see pipeline.prepared.shards),
plus meta.json with the shard index."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.io import read_json_record, staged_folder, write_json_record
from pipeline.prepared.classes import classes_problem
from pipeline.prepared.shards import ShardEntry, SplitShards, WrittenSplit, open_split, write_split
from pipeline.prepared.stats import stats_problem
from pipeline.prepared.types import SPLITS, LabelledImages, Quarantined, SourceData

DEFAULT_SHARD_IMAGES = 4096  # data.shard_images' default

META_FILE = "meta.json"


class PreparedDataError(PipelineError):
    pass


@dataclass(frozen=True, kw_only=True)
class PreparedMeta:
    """meta.json, what later stages know of the prepared data. The fields are the file's keys,
    in the file's order: changing them changes every prepared folder's hash."""

    source: str
    class_names: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, int, int]  # channels, height, width of one image
    mean: tuple[float, ...]  # per channel, of the train split on the 0..1 scale
    std: tuple[float, ...]
    counts: dict[str, int]  # images per split
    input_hashes: dict[str, str]
    quarantined: tuple[Quarantined, ...]
    # split -> its shards in order; filled in by write_prepared once they are written
    shards: dict[str, tuple[ShardEntry, ...]] = field(default_factory=dict)

    @classmethod
    def from_written(cls, source: SourceData, written: dict[str, WrittenSplit]) -> PreparedMeta:
        """The meta of splits as written: stats of the train split's written pixels, and the
        files that failed to decode at write time quarantined beside the source's own."""
        train = written["train"]
        failed = [entry for part in written.values() for entry in part.failed]
        return cls(
            source=source.name,
            class_names=tuple(source.class_names),
            num_classes=len(source.class_names),
            input_shape=train.image_shape,
            mean=tuple(train.mean),
            std=tuple(train.std),
            counts={name: part.count for name, part in written.items()},
            input_hashes=dict(source.input_hashes),
            quarantined=tuple(sorted([*source.quarantined, *failed], key=lambda q: q.path)),
            shards={name: tuple(part.entries) for name, part in written.items()},
        )

    @classmethod
    def from_json(cls, path: str | Path) -> PreparedMeta:
        meta = read_json_record(path, cls, PreparedDataError, "prepared-data meta file")
        # Typed but not yet sane: a std of 0 or NaN divides every later stage's inputs.
        problem = classes_problem(meta.class_names, meta.num_classes) or stats_problem(
            meta.mean, meta.std, meta.input_shape[0]
        )
        if problem:
            raise PreparedDataError(f"{path}: {problem}")
        return meta

    def to_json(self, path: str | Path) -> None:
        write_json_record(path, self)


def write_prepared(
    out_dir: str | Path,
    source: SourceData,
    splits: dict[str, LabelledImages],
    shard_images: int = DEFAULT_SHARD_IMAGES,
    seed: int = 0,
    check: Callable[[PreparedMeta, dict[str, WrittenSplit]], None] | None = None,
) -> PreparedMeta:
    """Write every split as shards, then meta.json with their index, into a staged folder that
    replaces ``out_dir`` only when all is written and ``check`` (which sees the meta and the
    written splits before meta.json exists) passes. Returns the meta."""
    with staged_folder(out_dir) as staging:
        written = {
            name: write_split(staging, name, splits[name].images, splits[name].labels,
                              shard_images, seed + offset)
            for offset, name in enumerate(SPLITS)
        }  # fmt: skip
        meta = PreparedMeta.from_written(source, written)
        if check is not None:
            check(meta, written)
        meta.to_json(staging / META_FILE)
    return meta


def read_meta(prepared_dir: str | Path) -> PreparedMeta:
    return PreparedMeta.from_json(Path(prepared_dir) / META_FILE)


def split_shards(prepared_dir: str | Path, name: str, verify: bool = True) -> SplitShards:
    """A split's checked shards, for readers that stream them (see pipeline.prepared.shards)."""
    meta = read_meta(prepared_dir)
    return open_split(
        prepared_dir,
        name,
        meta.shards.get(name, ()),
        meta.input_shape,
        meta.num_classes,
        meta.counts.get(name),
        verify,
    )


def read_split(prepared_dir: str | Path, name: str) -> LabelledImages:
    images, labels = split_shards(prepared_dir, name).load()
    return LabelledImages(images, labels.astype(np.int64))


def read_split_tensors(prepared_dir: str | Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return split_shards(prepared_dir, name).load_tensors()
