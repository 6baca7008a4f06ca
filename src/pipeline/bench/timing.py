"""Warm up, then time a call until both an iteration count and a duration are reached; repeat
that timing loop so a figure comes with its spread (a busy neighbour moves one repeat, not all)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Timing:
    warmup: int
    iterations: int
    first_call_ms: float
    latencies_ms: np.ndarray
    # p50 of each repeat of the timing loop; empty means one loop over ``latencies_ms``.
    repeat_p50_ms: np.ndarray = field(default_factory=lambda: np.empty(0))

    def summary(self, batch_size: int) -> dict[str, float | int | None]:
        lat = self.latencies_ms
        repeats = self.repeat_p50_ms if len(self.repeat_p50_ms) else np.percentile(lat, [50])
        # The median of the repeats' p50s: one disturbed repeat does not move it.
        p50 = float(np.median(repeats))
        return {
            "warmup": self.warmup,
            "iterations": self.iterations,
            "repeats": len(repeats),
            "first_call_ms": self.first_call_ms,
            "latency_ms_mean": float(lat.mean()),
            "latency_ms_p50": p50,
            "latency_ms_p50_min": float(repeats.min()),
            "latency_ms_p50_max": float(repeats.max()),
            "latency_spread": spread(repeats),
            "latency_ms_p90": float(np.percentile(lat, 90)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "ms_per_image": p50 / batch_size,
            "images_per_s": batch_size * 1000.0 / p50,
        }


def spread(values: np.ndarray) -> float | None:
    """(max - min) / median of the repeats; None from a single repeat (no spread is known)."""
    if len(values) < 2:
        return None
    return float((values.max() - values.min()) / np.median(values))


def time_call(
    call: Callable[[], object],
    sync: Callable[[], None],
    warmup: int,
    min_iterations: int,
    min_seconds: float,
    max_iterations: int = 100_000,
    repeats: int = 1,
) -> Timing:
    """``sync`` waits for queued device work, so each latency covers the computation itself.

    The warm-up runs once; each of ``repeats`` loops then times until both ``min_iterations``
    and ``min_seconds`` are reached (``max_iterations`` bounds each loop).
    """
    started = time.perf_counter()
    call()
    sync()
    first_call_ms = (time.perf_counter() - started) * 1000.0
    for _ in range(warmup):
        call()
    sync()
    loops = [
        _timed_loop(call, sync, min_iterations, min_seconds, max_iterations) for _ in range(repeats)
    ]
    latencies = np.concatenate(loops)
    p50s = np.asarray([np.percentile(loop, 50) for loop in loops])
    return Timing(warmup, len(latencies), first_call_ms, latencies, p50s)


def _timed_loop(call, sync, min_iterations: int, min_seconds: float, max_iterations: int):
    latencies = []
    deadline = time.perf_counter() + min_seconds
    while len(latencies) < max_iterations and (
        len(latencies) < min_iterations or time.perf_counter() < deadline
    ):
        begin = time.perf_counter()
        call()
        sync()
        latencies.append((time.perf_counter() - begin) * 1000.0)
    return np.asarray(latencies)
