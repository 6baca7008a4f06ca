"""scikit-learn's bundled 8x8 digits: the embedded default, no network and no files."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.datasets import load_digits

from pipeline.core.io import sha256_bytes
from pipeline.prepared.types import LabelledImages, SourceData

if TYPE_CHECKING:
    from pipeline.core.config import DataParams

DIGITS_MAX_VALUE = 16  # the set stores grey levels 0..16


def load(params: DataParams | None = None) -> SourceData:
    """The whole set; ``params`` is taken like every source's loader, and nothing in it applies."""
    bunch = load_digits()
    scaled = np.rint(bunch.images * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)
    images = scaled[:, None, :, :]  # N x 1 x 8 x 8
    labels = bunch.target.astype(np.int64)
    return SourceData(
        name="digits",
        pools={"all": LabelledImages(images, labels)},
        class_names=[str(name) for name in bunch.target_names],
        input_hashes={"sklearn:digits": sha256_bytes(images.tobytes() + labels.tobytes())},
        files_seen=len(images),
    )
