"""Timing rounds after the first: every backend in turn, then more rounds for the rows still
noisy while the time budget lasts, and each round checked against what ran the first one.

A busy machine moves some rounds, not all: a row's figure is the median of its rounds' p50s
and its spread their IQR / median (bench/timing.py), so rounds added to a noisy row settle it
instead of widening it. The PyTorch eager baseline goes first in every extra round, so that
the speed-ups exist whenever the backends themselves were measured steadily.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.bench.backends import Plan, RunFacts
from pipeline.bench.rows import MIN_ROUNDS, BenchRow
from pipeline.bench.timing import round_figures, spread, time_call
from pipeline.core.errors import describe
from pipeline.export.safety import UnsafeModelError


@dataclass
class Measured:
    """A row on its way, and beside it what the rounds and the derived columns still need."""

    plan: Plan
    row: BenchRow
    facts: RunFacts | None = None  # what ran the first round; None: never timed
    rounds: list[np.ndarray] = field(default_factory=list)  # latencies of each good round
    failed: list[str] = field(default_factory=list)  # why a round did not run
    ran_otherwise: list[str] = field(default_factory=list)  # rounds that ran another way

    def spread(self) -> float | None:
        return spread(np.asarray([np.percentile(r, 50) for r in self.rounds]))


@dataclass(frozen=True)
class RoundResult:
    latencies: np.ndarray
    facts: RunFacts  # what ran this round: checked again every time


def why(error: Exception) -> str:
    return describe(error)[:300]


def is_noisy(spread: float | None, max_spread: float) -> bool:
    """A row whose rounds disagree by more than ``max_spread`` (relative) is noisy."""
    return spread is not None and spread > max_spread


def batch_of(images: np.ndarray, batch_size: int) -> np.ndarray:
    """The first ``batch_size`` test images, repeated when the split is smaller."""
    repeats = -(-batch_size // len(images))
    return np.ascontiguousarray(np.concatenate([images] * repeats)[:batch_size])


def time_size(backend, params, images, size: int) -> RoundResult:
    call = backend.bind(batch_of(images, size))
    timing = time_call(call, backend.sync, params.warmup, params.min_iterations, params.min_seconds)
    return RoundResult(timing.latencies_ms, backend.facts)


def retime_backend(plan: Plan, params, images, sizes) -> dict[int, RoundResult | str]:
    """One more round for one backend, built afresh: latencies and what ran, or why not."""
    try:
        backend = plan.build()
    except UnsafeModelError:
        raise
    except Exception as error:
        return dict.fromkeys(sizes, why(error))
    results: dict[int, RoundResult | str] = {}
    for size in sizes:
        try:
            results[size] = time_size(backend, params, images, size)
        except Exception as error:
            results[size] = why(error)
    return results


def record(item: Measured, result: RoundResult | str) -> None:
    """Merge a round into its row only if it ran as the first round did."""
    if isinstance(result, str):
        item.failed.append(result)
    elif item.facts is not None and result.facts.same_run(item.facts):
        item.rounds.append(result.latencies)
    else:
        item.ran_otherwise.append(result.facts.describe())


def wants_round(item: Measured, params) -> bool:
    """A row that can be the headline or the baseline, short of rounds or still noisy."""
    if item.facts is None or item.facts.status != "ok" or item.row.top1_accuracy is None:
        return False
    if len(item.rounds) + len(item.failed) + len(item.ran_otherwise) >= params.max_repeats:
        return False  # rounds tried, good or not: a backend that keeps failing stops here
    return len(item.rounds) < MIN_ROUNDS or is_noisy(item.spread(), params.max_spread)


def _round(items: list[Measured], sizes_of: dict[Plan, list[int]], params, images, clock, deadline):
    for plan, sizes in sizes_of.items():
        if clock() >= deadline:
            return
        results = retime_backend(plan, params, images, sizes)
        for item in items:
            if item.plan is plan and item.row.batch_size in results:
                record(item, results[item.row.batch_size])


def timed_rounds(
    items: list[Measured], params, images, clock: Callable[[], float] = time.monotonic
) -> None:
    """Rounds 2..repeats over every backend in turn (load that comes and goes over tens of
    seconds lands in the spread, not in one backend's figures); then, within
    benchmark.extra_seconds, rounds for the rows that want one, baseline first."""
    plans = list(dict.fromkeys(item.plan for item in items))
    every = {plan: list(params.batch_sizes) for plan in plans}
    for number in range(2, params.repeats + 1):
        print(f"benchmark: timing round {number}/{params.repeats}", file=sys.stderr)
        _round(items, every, params, images, clock, float("inf"))
    deadline = clock() + params.extra_seconds
    number = params.repeats
    while clock() < deadline:
        wanting = [item for item in items if wants_round(item, params)]
        if not wanting:
            return
        wanting.sort(key=lambda item: not item.row.is_baseline)  # the baseline first
        sizes_of: dict[Plan, list[int]] = {}
        for item in wanting:
            sizes_of.setdefault(item.plan, []).append(item.row.batch_size)
        number += 1
        print(f"benchmark: extra round {number} for {len(wanting)} noisy row(s)", file=sys.stderr)
        _round(items, sizes_of, params, images, clock, deadline)


def finish(item: Measured, max_spread: float) -> BenchRow:
    """The row with its rounds' figures and notes on the rounds that were not merged."""
    row = item.row
    if item.rounds:
        figures = round_figures(item.rounds, row.batch_size)
        row = replace(row, **figures, noisy=is_noisy(figures["latency_spread"], max_spread))
    if item.failed:  # the row keeps the rounds that ran; its repeats column says how many
        row = row.with_note(f"{len(item.failed)} timing round(s) failed: {item.failed[0]}")
    if item.ran_otherwise:
        count, first = len(item.ran_otherwise), item.ran_otherwise[0]
        row = row.with_note(f"{count} timing round(s) ran {first}: not merged into this row")
    if 0 < len(item.rounds) < MIN_ROUNDS:
        row = row.with_note("1 good timing round: no spread, not eligible for the headline")
    return row
