"""Timing rounds after the first: every backend in turn, then more rounds for the rows still
noisy while the time budget lasts, and each round checked against what ran the first one.

A busy machine moves some rounds, not all: a row's figure is the median of its rounds' p50s
and its spread their IQR / median (bench/timing.py), so rounds added to a noisy row settle it
instead of widening it. Every good round keeps its number, and the PyTorch eager baseline of a
batch size is timed first in every extra round that times a row of that size: a speed-up is
taken round by round against the baseline timed under the same load (rows.paired_speedup).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.bench.backends import Plan, RunFacts
from pipeline.bench.rows import MIN_ROUNDS, BenchRow
from pipeline.bench.timing import paired_ratios, round_figures, spread, time_call
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
    # The round each of ``rounds`` was timed in: 1 is benchmark_backend's, 2..repeats every
    # backend's in turn, then the extra rounds. Rows are paired with the baseline by it.
    round_numbers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.round_numbers) != len(self.rounds):  # unnumbered rounds cannot be paired
            raise ValueError(f"{len(self.rounds)} rounds, {len(self.round_numbers)} numbers")

    def spread(self) -> float | None:
        return spread(np.asarray([np.percentile(r, 50) for r in self.rounds]))

    def p50_by_round(self) -> dict[int, float]:
        """Each good round's p50, by the number of the round it was timed in."""
        pairs = zip(self.round_numbers, self.rounds, strict=True)
        return {number: float(np.percentile(latencies, 50)) for number, latencies in pairs}


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


def record(item: Measured, result: RoundResult | str, number: int) -> None:
    """Merge round ``number`` into its row only if it ran as the first round did."""
    if isinstance(result, str):
        item.failed.append(result)
    elif item.facts is not None and result.facts.same_run(item.facts):
        item.rounds.append(result.latencies)
        item.round_numbers.append(number)
    else:
        item.ran_otherwise.append(result.facts.describe())


def can_be_ranked(item: Measured) -> bool:
    """A row that ran as asked with its accuracy measured: one that can be the headline or the
    baseline, so more rounds can change what is reported."""
    facts = item.facts
    return facts is not None and facts.status == "ok" and item.row.top1_accuracy is not None


def wants_round(item: Measured, params, base: Measured | None = None) -> bool:
    """A row that can be the headline or the baseline, short of rounds, still noisy, or (beside
    ``base``, the baseline of its batch size) without a steady speed-up yet: a baseline that a
    neighbour disturbed in a row's first rounds pairs with the row again in later ones."""
    if not can_be_ranked(item):
        return False
    if len(item.rounds) + len(item.failed) + len(item.ran_otherwise) >= params.max_repeats:
        return False  # rounds tried, good or not: a backend that keeps failing stops here
    if len(item.rounds) < MIN_ROUNDS or is_noisy(item.spread(), params.max_spread):
        return True
    return not item.row.is_baseline and not speedup_settled(item, base, params.max_spread)


def speedup_settled(item: Measured, base: Measured | None, max_spread: float) -> bool:
    """Whether ``item``'s rounds paired with ``base``'s give a speed-up already (2 pairs or
    more, within ``max_spread``); true where no baseline can pair, as more rounds cannot help."""
    if base is None or not can_be_ranked(base):
        return True
    ratios = paired_ratios(base.p50_by_round(), item.p50_by_round())
    return len(ratios) >= MIN_ROUNDS and not is_noisy(spread(ratios), max_spread)


def sizes_to_time(items: list[Measured], wanting: list[Measured]) -> dict[Plan, list[int]]:
    """An extra round's backends and their batch sizes: the rows that want a round and, first,
    the baseline of each of their sizes, so each of their rounds has the baseline timed under
    the same load beside it (even a steady baseline: the speed-up is paired round by round).
    The baseline needs no max_repeats of its own here: it is timed only in rounds a row of its
    size wants, and those rows stop at max_repeats."""
    sizes = {item.row.batch_size for item in wanting}
    bases = [i for i in items if i.row.is_baseline and i.row.batch_size in sizes]
    sizes_of: dict[Plan, list[int]] = {}
    for item in [*filter(can_be_ranked, bases), *wanting]:
        planned = sizes_of.setdefault(item.plan, [])
        if item.row.batch_size not in planned:
            planned.append(item.row.batch_size)
    return sizes_of


def _round(items: list[Measured], sizes_of, params, images, clock, deadline, number: int):
    """Round ``number``: each backend of ``sizes_of`` in turn, at its sizes, until ``deadline``."""
    for plan, sizes in sizes_of.items():
        if clock() >= deadline:
            return
        results = retime_backend(plan, params, images, sizes)
        for item in items:
            if item.plan is plan and item.row.batch_size in results:
                record(item, results[item.row.batch_size], number)


def timed_rounds(
    items: list[Measured], params, images, clock: Callable[[], float] = time.monotonic
) -> None:
    """Rounds 2..repeats over every backend in turn (load that comes and goes over tens of
    seconds lands in the spread, not in one backend's figures); then, within
    benchmark.extra_seconds, rounds for the rows that want one, beside the baseline of their
    batch size (timed first)."""
    plans = list(dict.fromkeys(item.plan for item in items))
    every = {plan: list(params.batch_sizes) for plan in plans}
    for number in range(2, params.repeats + 1):
        print(f"benchmark: timing round {number}/{params.repeats}", file=sys.stderr)
        _round(items, every, params, images, clock, float("inf"), number)
    deadline = clock() + params.extra_seconds
    number = params.repeats
    while clock() < deadline:
        bases = {item.row.batch_size: item for item in items if item.row.is_baseline}
        wanting = [
            item for item in items if wants_round(item, params, bases.get(item.row.batch_size))
        ]
        if not wanting:
            return
        number += 1
        print(f"benchmark: extra round {number} for {len(wanting)} row(s) noisy or without a "
              "steady speed-up", file=sys.stderr)  # fmt: skip
        _round(items, sizes_to_time(items, wanting), params, images, clock, deadline, number)


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
