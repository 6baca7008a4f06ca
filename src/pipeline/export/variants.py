"""What every variant shares: the converter signature, its inputs and what it returns, the files'
names (from ``catalog.VARIANTS``), and the seeded train sample a calibrating converter draws.

A derived variant is one module of this package with a ``convert(fp32_path, out_path, context)``
function, named by its catalog entry; ``export/run.py`` calls each one asked for in one loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx
import torch

from pipeline.core.catalog import VARIANTS
from pipeline.export.safety import UnsafeModelError, check_onnx_file

if TYPE_CHECKING:  # pydantic stays out of torch-only users (benchmarks/gpu_check.py)
    from pipeline.core.config import Params

VARIANT_FILES = {variant.name: variant.file for variant in VARIANTS}


def variant_path(onnx_dir: str | Path, variant: str) -> Path:
    return Path(onnx_dir) / VARIANT_FILES[variant]


def exported_files(onnx_dir: str | Path, names: list[str]) -> dict[str, Path]:
    """Each variant's file, checked, and refused unless its metadata names that variant: an int8
    file copied over model.onnx would otherwise be timed and reported as fp32."""
    files = {}
    for name in names:
        path = variant_path(onnx_dir, name)
        props = {prop.key: prop.value for prop in check_onnx_file(path).metadata_props}
        if props.get("variant") != name:
            raise UnsafeModelError(
                f"{path}: the file's metadata says variant {props.get('variant')!r}, not "
                f"{name!r}; it was not written there by export: run dvc repro -s export"
            )
        files[name] = path
    return files


@dataclass(frozen=True)
class ConvertContext:
    """What a converter may read besides the fp32 file: the params, the train images the stage
    read for calibration, and ``feed``, which turns uint8 images into what the graph takes."""

    params: Params
    train_images: torch.Tensor
    feed: Callable[[torch.Tensor], torch.Tensor]

    def calibration_inputs(self, count: int) -> np.ndarray:
        """A seeded sample of ``count`` train images, in the graph's input dtype and layout."""
        sample = calibration_sample(self.train_images.numpy(), count, self.params.seed)
        return np.ascontiguousarray(self.feed(torch.from_numpy(sample)).numpy())


@dataclass(frozen=True)
class VariantInfo:
    """What a converter did: ``facts`` join the variant's record in export.json; ``remedy``,
    when set, replaces the catalog entry's advice for a failed gate (it knows what it chose)."""

    facts: dict[str, Any] = field(default_factory=dict)
    remedy: str | None = None


class Converter(Protocol):
    def __call__(self, fp32_path: Path, out_path: Path, context: ConvertContext) -> VariantInfo: ...


def derived_metadata(source: onnx.ModelProto, variant: str, **extra: str) -> dict[str, str]:
    """The fp32 file's metadata (class names, normalisation, ...) naming ``variant`` instead."""
    return {prop.key: prop.value for prop in source.metadata_props} | {"variant": variant} | extra


def calibration_rows(total: int, count: int, seed: int) -> np.ndarray:
    """The sorted rows of a fixed sample: the same ``seed`` always draws the same rows."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=min(count, total), replace=False))


def calibration_sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A fixed sample of ``images``: the same ``seed`` always draws the same images, in order."""
    return np.ascontiguousarray(images[calibration_rows(len(images), count, seed)])
