"""The prepared-data contract: uint8 safetensors shards per split (see pipeline.data.shards),
plus meta.json with the shard index."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pipeline.data.shards import ShardEntry, SplitShards, open_split, remove_shards, write_split
from pipeline.data.split import SPLITS, channel_stats
from pipeline.data.types import LabelledImages, Quarantined, SourceData
from pipeline.errors import PipelineError
from pipeline.io import read_json_record, write_json_record

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
    def build(cls, source: SourceData, splits: dict[str, LabelledImages]) -> PreparedMeta:
        mean, std = channel_stats(splits["train"].images)
        channels, height, width = splits["train"].images.shape[1:]
        return cls(
            source=source.name,
            class_names=tuple(source.class_names),
            num_classes=len(source.class_names),
            input_shape=(int(channels), int(height), int(width)),
            mean=tuple(mean),
            std=tuple(std),
            counts={name: len(part) for name, part in splits.items()},
            input_hashes=dict(source.input_hashes),
            quarantined=tuple(source.quarantined),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> PreparedMeta:
        return read_json_record(path, cls, PreparedDataError, "prepared-data meta file")

    def to_json(self, path: str | Path) -> None:
        write_json_record(path, self)


def write_prepared(
    out_dir: str | Path,
    splits: dict[str, LabelledImages],
    meta: PreparedMeta,
    shard_images: int = DEFAULT_SHARD_IMAGES,
    seed: int = 0,
) -> PreparedMeta:
    """Write every split as shards, then meta.json with their index; returns that meta."""
    out_dir = Path(out_dir)
    (out_dir / META_FILE).unlink(missing_ok=True)
    index = {}
    for offset, name in enumerate(SPLITS):
        part = splits[name]
        remove_shards(out_dir, name)
        index[name] = tuple(
            write_split(out_dir, name, part.images, part.labels, shard_images, seed + offset)
        )
    meta = replace(meta, shards=index)
    # meta.json last: its presence marks a complete prepared folder.
    meta.to_json(out_dir / META_FILE)
    return meta


def read_meta(prepared_dir: str | Path) -> PreparedMeta:
    return PreparedMeta.from_json(Path(prepared_dir) / META_FILE)


def split_shards(prepared_dir: str | Path, name: str, verify: bool = True) -> SplitShards:
    """A split's checked shards, for readers that stream them (see pipeline.data.shards)."""
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
