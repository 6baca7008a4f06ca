"""The prepared-data contract: one uint8 safetensors file per split, plus meta.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.split import SPLITS, channel_stats
from pipeline.data.types import LabelledImages, Quarantined, SourceData
from pipeline.errors import PipelineError
from pipeline.io import load_arrays, read_json_record, save_arrays, write_json_record

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
    out_dir: str | Path, splits: dict[str, LabelledImages], meta: PreparedMeta
) -> None:
    out_dir = Path(out_dir)
    for name in SPLITS:
        part = splits[name]
        save_arrays(out_dir / f"{name}.safetensors", {"images": part.images, "labels": part.labels})
    # meta.json last: its presence marks a complete prepared folder.
    meta.to_json(out_dir / META_FILE)


def read_meta(prepared_dir: str | Path) -> PreparedMeta:
    return PreparedMeta.from_json(Path(prepared_dir) / META_FILE)


def read_split(prepared_dir: str | Path, name: str) -> LabelledImages:
    arrays = load_arrays(Path(prepared_dir) / f"{name}.safetensors")
    return LabelledImages(arrays["images"], arrays["labels"].astype(np.int64))


def read_split_tensors(prepared_dir: str | Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    part = read_split(prepared_dir, name)
    return torch.from_numpy(part.images), torch.from_numpy(part.labels)
