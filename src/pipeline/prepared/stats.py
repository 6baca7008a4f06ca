"""Per-channel mean and std of uint8 images, from a histogram of their values.

A histogram (256 counts per channel) adds up shard by shard, exactly and in integers, and never
needs a float copy of the pixels: prepare's memory stays at the size of the shards it holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVELS = np.arange(256, dtype=np.float64)
# The smallest std written and read: a constant channel (std 0) would divide by zero, and one
# far smaller overflows the model's float32 scale factor (1 / (255 * std)).
MIN_STD = 1e-6


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """(channels, 256) counts of each uint8 value, per channel, of NCHW ``images``."""
    return np.stack(
        [np.bincount(images[:, c].ravel(), minlength=256) for c in range(images.shape[1])]
    ).astype(np.int64)


def histogram_stats(histogram: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale (std at least MIN_STD: it divides)."""
    count = np.maximum(histogram.sum(axis=1), 1)
    mean = histogram @ LEVELS / count
    variance = np.maximum(histogram @ np.square(LEVELS) / count - np.square(mean), 0.0)
    std = np.sqrt(variance) / 255.0
    return [float(m) for m in mean / 255.0], [float(max(s, MIN_STD)) for s in std]


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NCHW images, on the 0..1 scale."""
    return histogram_stats(pixel_histogram(images))


def stats_problem(
    mean: Sequence[float], std: Sequence[float], channels: int, where: str = ""
) -> str | None:
    """Why ``mean`` and ``std`` read from a file cannot scale ``channels``-channel images, as
    ``field '<where>std[0]': ...``; None when they can.

    Pixel statistics on the 0..1 scale have a mean in 0..1 and a std of at most 0.5 (checked
    against 1, loosely); anything else (NaN, inf, 0, negative, one value too few) was not
    computed from pixels and would make a later stage divide by zero or score garbage.
    """
    for name, values, low in (("mean", mean, 0.0), ("std", std, MIN_STD)):
        if len(values) != channels:
            count = len(values)
            return f"field '{where}{name}': {count} values for a {channels}-channel input_shape"
        for index, value in enumerate(values):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and low <= value <= 1.0):
                return f"field '{where}{name}[{index}]': must be from {low:g} to 1, got {value!r}"
    return None
