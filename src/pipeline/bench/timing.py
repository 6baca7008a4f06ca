"""Warm up, then time a call until both an iteration count and a duration are reached; repeat
that timing loop so a figure comes with its spread (a busy neighbour moves one repeat, not all).
:func:`round_figures` turns the rounds' latencies into a row's figures, :func:`paired_ratios`
two rows' rounds into the ratios a speed-up is taken from."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    warmup: int
    first_call_ms: float
    rounds: tuple[np.ndarray, ...]  # the latencies of each repeat of the timing loop

    @property
    def latencies_ms(self) -> np.ndarray:
        return np.concatenate(self.rounds)

    @property
    def iterations(self) -> int:
        return sum(len(latencies) for latencies in self.rounds)

    def summary(self, batch_size: int) -> dict[str, float | int | None]:
        return {
            "warmup": self.warmup,
            "first_call_ms": self.first_call_ms,
            **round_figures(list(self.rounds), batch_size),
        }


def round_figures(rounds: list[np.ndarray], batch_size: int) -> dict[str, float | int | None]:
    """A row's figures from the latencies of its timing rounds: p50 is the median of the
    rounds' p50s (a disturbed minority of rounds does not move it), spread their IQR / median;
    mean and tails over every call."""
    p50s = np.asarray([np.percentile(latencies, 50) for latencies in rounds])
    calls = np.concatenate(rounds)
    p50 = float(np.median(p50s))
    return {
        "repeats": len(p50s),
        "iterations": len(calls),
        "latency_ms_mean": float(calls.mean()),
        "latency_ms_p50": p50,
        "latency_ms_p50_min": float(p50s.min()),
        "latency_ms_p50_max": float(p50s.max()),
        "latency_spread": spread(p50s),
        "latency_ms_p90": float(np.percentile(calls, 90)),
        "latency_ms_p99": float(np.percentile(calls, 99)),
        "ms_per_image": p50 / batch_size,
        "images_per_s": batch_size * 1000.0 / p50,
    }


def spread(values: np.ndarray) -> float | None:
    """Interquartile range / median of the rounds' p50s; None from a single round.

    Not (max - min): the range can only grow as rounds are added, so re-timing a noisy row
    would make it look noisier; the IQR leaves out the quarter of rounds at each end (a busy
    neighbour's worst and a lucky best) and settles as rounds accumulate. For 2 or 3 rounds
    it is half the range.
    """
    if len(values) < 2:
        return None
    low, high = np.percentile(values, [25, 75])
    return float((high - low) / np.median(values))


def paired_ratios(numerator: dict[int, float], denominator: dict[int, float]) -> np.ndarray:
    """numerator / denominator in each round (by number) both have a p50 in. A zero, negative
    or non-finite p50 (a broken clock, an empty round) says nothing about speed: that round is
    left out rather than turned into an infinite or NaN ratio."""
    ratios = []
    for number in sorted(numerator.keys() & denominator.keys()):
        top, bottom = float(numerator[number]), float(denominator[number])
        if _usable(top) and _usable(bottom) and _usable(top / bottom):
            ratios.append(top / bottom)
    return np.asarray(ratios, dtype=float)


def _usable(value: float) -> bool:
    return math.isfinite(value) and value > 0.0


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
    loops = tuple(
        _timed_loop(call, sync, min_iterations, min_seconds, max_iterations) for _ in range(repeats)
    )
    return Timing(warmup, first_call_ms, loops)


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
