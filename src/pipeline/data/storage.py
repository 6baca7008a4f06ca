"""The prepared-data contract: one uint8 safetensors file per split, plus meta.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.split import SPLITS, channel_stats
from pipeline.data.types import LabelledImages, SourceData
from pipeline.io import load_arrays, read_json, save_arrays, write_json

META_FILE = "meta.json"


def build_meta(source: SourceData, splits: dict[str, LabelledImages]) -> dict[str, Any]:
    mean, std = channel_stats(splits["train"].images)
    return {
        "source": source.name,
        "class_names": source.class_names,
        "num_classes": len(source.class_names),
        "input_shape": list(splits["train"].images.shape[1:]),
        "mean": mean,
        "std": std,
        "counts": {name: len(part) for name, part in splits.items()},
        "input_hashes": source.input_hashes,
        "quarantined": [{"path": q.path, "reason": q.reason} for q in source.quarantined],
    }


def write_prepared(out_dir: str | Path, splits: dict[str, LabelledImages], meta: dict) -> None:
    out_dir = Path(out_dir)
    for name in SPLITS:
        part = splits[name]
        save_arrays(out_dir / f"{name}.safetensors", {"images": part.images, "labels": part.labels})
    # meta.json last: its presence marks a complete prepared folder.
    write_json(out_dir / META_FILE, meta)


def read_meta(prepared_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(prepared_dir) / META_FILE)


def read_split(prepared_dir: str | Path, name: str) -> LabelledImages:
    arrays = load_arrays(Path(prepared_dir) / f"{name}.safetensors")
    return LabelledImages(arrays["images"], arrays["labels"].astype(np.int64))


def read_split_tensors(prepared_dir: str | Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    part = read_split(prepared_dir, name)
    return torch.from_numpy(part.images), torch.from_numpy(part.labels)
