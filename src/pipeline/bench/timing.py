"""Warm up, then time a call until both an iteration count and a duration are reached."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    warmup: int
    iterations: int
    first_call_ms: float
    latencies_ms: np.ndarray

    def summary(self, batch_size: int) -> dict[str, float | int]:
        lat = self.latencies_ms
        p50 = float(np.percentile(lat, 50))
        return {
            "warmup": self.warmup,
            "iterations": self.iterations,
            "first_call_ms": self.first_call_ms,
            "latency_ms_mean": float(lat.mean()),
            "latency_ms_p50": p50,
            "latency_ms_p90": float(np.percentile(lat, 90)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "ms_per_image": p50 / batch_size,
            "images_per_s": batch_size * 1000.0 / p50,
        }


def time_call(
    call: Callable[[], object],
    sync: Callable[[], None],
    warmup: int,
    min_iterations: int,
    min_seconds: float,
    max_iterations: int = 100_000,
) -> Timing:
    """``sync`` waits for queued device work, so each latency covers the computation itself."""
    started = time.perf_counter()
    call()
    sync()
    first_call_ms = (time.perf_counter() - started) * 1000.0
    for _ in range(warmup):
        call()
    sync()
    latencies = []
    deadline = time.perf_counter() + min_seconds
    while len(latencies) < max_iterations and (
        len(latencies) < min_iterations or time.perf_counter() < deadline
    ):
        begin = time.perf_counter()
        call()
        sync()
        latencies.append((time.perf_counter() - begin) * 1000.0)
    return Timing(warmup, len(latencies), first_call_ms, np.asarray(latencies))
