"""Per-channel mean and std of uint8 images, from a histogram of their values.

A histogram (256 counts per channel) adds up shard by shard, exactly and in integers, and never
needs a float copy of the pixels: prepare's memory stays at the size of the shards it holds.
"""

from __future__ import annotations

import numpy as np

LEVELS = np.arange(256, dtype=np.float64)


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """(channels, 256) counts of each uint8 value, per channel, of NCHW ``images``."""
    return np.stack(
        [np.bincount(images[:, c].ravel(), minlength=256) for c in range(images.shape[1])]
    ).astype(np.int64)


def histogram_stats(histogram: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale (std at least 1e-6: it divides)."""
    count = np.maximum(histogram.sum(axis=1), 1)
    mean = histogram @ LEVELS / count
    variance = np.maximum(histogram @ np.square(LEVELS) / count - np.square(mean), 0.0)
    std = np.sqrt(variance) / 255.0
    return [float(m) for m in mean / 255.0], [float(max(s, 1e-6)) for s in std]


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NCHW images, on the 0..1 scale."""
    return histogram_stats(pixel_histogram(images))
