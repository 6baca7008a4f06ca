"""Timing rounds after the first: every backend in turn, re-checked against what ran the first,
then more rounds for noisy rows (beside the baseline of their batch size) within the time
budget; speed-ups from the rounds a row and the baseline share."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.bench.backends import Plan, RunFacts
from pipeline.bench.rounds import Measured, finish, timed_rounds
from pipeline.bench.rows import BenchRow
from pipeline.bench.run import derive
from pipeline.core.config import BenchmarkParams

GPU = RunFacts("ok", "", ("CUDAExecutionProvider",), "fp32", True, "cuda_fp32")
CPU = RunFacts("fallback", "CUDA failed", ("CPUExecutionProvider",), "fp32", False, "cpu")
IMAGES = np.zeros((2, 1, 2, 2), np.uint8)


class Fake:
    """A backend whose calls take no time and whose session reports ``facts``."""

    def __init__(self, facts: RunFacts, log: list[str], name: str):
        self.facts = facts
        self.name = name
        log.append(name)

    def bind(self, batch):
        return lambda: None

    def sync(self):
        pass


def plan(name: str, log: list[str], facts=GPU, variant="fp32") -> Plan:
    facts_of = facts if callable(facts) else lambda: facts
    return Plan(name, variant, "cuda", "ort_cuda", lambda: Fake(facts_of(), log, name))


def first_round(p: Plan, ms: float = 1000.0, facts=GPU, batch: int = 1) -> Measured:
    row = BenchRow(backend=p.name, variant=p.variant, batch_size=batch, status=facts.status,
                   top1_accuracy=0.9)  # fmt: skip
    return Measured(p, row, facts, [np.full(3, ms)], round_numbers=[1])


def params(**values) -> BenchmarkParams:
    fast = {"batch_sizes": [1], "warmup": 0, "min_iterations": 3, "min_seconds": 0.0}
    return BenchmarkParams(**{**fast, "extra_seconds": 0.0, **values})


def test_rounds_go_over_every_backend_in_turn_and_merge_into_the_row():
    built: list[str] = []

    def broken():
        built.append("b")
        raise RuntimeError("no device")

    plans = [plan("a", built), Plan("b", "fp32", "cuda", "ort_cuda", broken)]
    items = [first_round(p) for p in plans]  # round 1: far slower than the no-op rounds after
    timed_rounds(items, params(repeats=3), IMAGES)
    assert built == ["a", "b", "a", "b"]  # round 2 then round 3, every backend in each
    first, second = (finish(item, 0.125) for item in items)
    assert first.repeats == 3 and first.latency_ms_p50_max == 1000.0 and first.iterations == 9
    assert first.latency_spread > 0.125 and first.noisy is True
    assert second.repeats == 1 and second.latency_spread is None and not second.noisy
    assert "2 timing round(s) failed: RuntimeError: no device" in second.note
    assert "1 good timing round: no spread, not eligible for the headline" in second.note


def test_a_round_that_ran_on_other_providers_is_not_merged():
    """The second round's session fell back to the CPU: its latencies are not the GPU row's."""
    sessions = iter([CPU, GPU])
    item = first_round(plan("onnxruntime_cuda", [], facts=lambda: next(sessions)), ms=2.0)
    timed_rounds([item], params(repeats=3), IMAGES)
    row = finish(item, 0.125)
    assert row.repeats == 2 and row.iterations == 6  # rounds 1 and 3
    assert "1 timing round(s) ran fallback on CPUExecutionProvider (fp32): not merged" in row.note


def test_noisy_rows_get_more_rounds_baseline_first_until_steady(monkeypatch):
    from pipeline.bench import rounds

    def ten_ms(backend, params, images, size):  # every round after the first: 10 ms
        return rounds.RoundResult(np.full(3, 10.0), backend.facts)

    monkeypatch.setattr(rounds, "time_size", ten_ms)
    log: list[str] = []
    eager = plan("pytorch_eager", log)
    ort = plan("onnxruntime_cuda", log)
    steady = plan("onnxruntime_cpu", log)
    items = [first_round(ort, 50.0), first_round(steady, 10.0), first_round(eager, 50.0)]
    timed_rounds(items, params(repeats=2, max_repeats=6, extra_seconds=60.0), IMAGES)
    # Round 2 goes over all three; then the noisy ones, the baseline first in each round, and
    # the steady CPU row too: paired with eager's disturbed first round, its ratios (5, 1) have
    # not settled; after 5 rounds (5, 1, 1, 1, 1) they have.
    assert log[:3] == ["onnxruntime_cuda", "onnxruntime_cpu", "pytorch_eager"]
    assert log[3:] == ["pytorch_eager", "onnxruntime_cuda", "onnxruntime_cpu"] * 3
    rows = [finish(item, 0.125) for item in items]
    # p50s 50, 10, 10, 10, 10: the IQR leaves the disturbed first round out, so both settle.
    assert [row.repeats for row in rows] == [5, 5, 5]
    assert all(row.noisy is False and row.latency_ms_p50 == 10.0 for row in rows)


def test_a_row_that_stays_noisy_stops_at_max_repeats(monkeypatch):
    from pipeline.bench import rounds

    values = itertools.cycle([5.0, 20.0])
    monkeypatch.setattr(
        rounds, "time_size",
        lambda backend, *_: rounds.RoundResult(np.full(3, next(values)), backend.facts),
    )  # fmt: skip
    item = first_round(plan("pytorch_eager", []), 50.0)
    timed_rounds([item], params(repeats=2, max_repeats=7, extra_seconds=60.0), IMAGES)
    row = finish(item, 0.125)
    assert row.repeats == 7 and row.noisy is True


def test_extra_rounds_stop_at_the_time_budget():
    log: list[str] = []
    noisy = plan("onnxruntime_cuda", log)
    clock = itertools.count(0.0, 1.0)  # every reading one second later
    item = first_round(noisy, 50.0)
    timed_rounds([item], params(repeats=2, max_repeats=100, extra_seconds=3.0),
                 IMAGES, clock=lambda: next(clock))  # fmt: skip
    assert 1 <= len(log) - 1 <= 3  # round 2, then what three seconds allowed


def test_max_repeats_must_cover_repeats():
    import pytest

    from pipeline.core.config import ParamsError, parse_params

    with pytest.raises(ParamsError, match="'benchmark.max_repeats'.*at least benchmark.repeats"):
        parse_params({"benchmark": {"repeats": 5, "max_repeats": 3}})


def fake_rounds(monkeypatch, p50s: dict[tuple[str, int], list[float]]) -> list[tuple[str, int]]:
    """Every round after the first: backend ``name`` at batch ``size`` takes the next of
    ``p50s[name, size]`` ms (cycled). Returns what was timed, in order, as (name, size)."""
    from pipeline.bench import rounds

    timed: list[tuple[str, int]] = []
    cycles = {key: itertools.cycle(values) for key, values in p50s.items()}

    def time_size(backend, params, images, size):
        timed.append((backend.name, size))
        return rounds.RoundResult(np.full(3, next(cycles[backend.name, size])), backend.facts)

    monkeypatch.setattr(rounds, "time_size", time_size)
    return timed


def finished(items: list[Measured]) -> list[BenchRow]:
    """The rows as run_benchmark reports them: figures from the rounds, then the speed-ups."""
    for item in items:
        item.row = finish(item, 0.125)
    return derive(items, flops=1000, peaks={}, max_spread=0.125)


def test_a_noisy_baseline_still_gives_a_speedup_paired_round_by_round(monkeypatch):
    """Load comes and goes: from round to round both rows' p50s swing by up to 3x and both are
    noisy, but within each round the neighbour slows them alike and eager takes 4x as long.
    The speed-up is the median of the per-round ratios (dividing by the noisy baseline's
    figure, as before, gave none)."""
    load = [3.0, 1.2, 2.8, 1.1, 2.9]  # rounds 2..6; round 1 unloaded
    fake_rounds(monkeypatch, {("pytorch_eager", 1): [4.0 * f for f in load],
                              ("onnxruntime_cuda", 1): [1.0 * f for f in load]})  # fmt: skip
    eager, ort = plan("pytorch_eager", []), plan("onnxruntime_cuda", [])
    items = [first_round(ort, 1.0), first_round(eager, 4.0)]
    timed_rounds(items, params(repeats=3, max_repeats=6, extra_seconds=60.0), IMAGES)
    assert [item.round_numbers for item in items] == [[1, 2, 3, 4, 5, 6]] * 2
    row, base = finished(items)
    assert row.noisy is True and base.noisy is True and base.latency_spread > 0.5
    assert row.speedup_vs_eager == pytest.approx(4.0)
    assert row.speedup_spread == pytest.approx(0.0, abs=1e-9)
    assert row.speedup_unavailable is None
    assert base.speedup_vs_eager == pytest.approx(1.0)  # the baseline paired with itself


def test_a_steady_baseline_is_timed_beside_a_noisy_row_of_its_batch_size(monkeypatch):
    """Pairs need the baseline in every round a row gets: eager is steady (10 ms) and wants no
    round of its own, yet it is timed first in each extra round, at batch 64 only, the size of
    the noisy row; the ratios it gives are as noisy as the row, so no speed-up there."""
    timed = fake_rounds(monkeypatch, {
        ("pytorch_eager", 1): [10.0], ("pytorch_eager", 64): [10.0],
        ("onnxruntime_cuda", 1): [1.0], ("onnxruntime_cuda", 64): [2.0, 1.0],
    })  # fmt: skip
    eager, ort = plan("pytorch_eager", []), plan("onnxruntime_cuda", [])
    items = [first_round(eager, 10.0, batch=1), first_round(eager, 10.0, batch=64),
             first_round(ort, 1.0, batch=1), first_round(ort, 1.0, batch=64)]  # fmt: skip
    sizes = params(batch_sizes=[1, 64], repeats=2, max_repeats=5, extra_seconds=60.0)
    timed_rounds(items, sizes, IMAGES)
    assert timed[4:] == [("pytorch_eager", 64), ("onnxruntime_cuda", 64)] * 3  # rounds 3..5
    every_round = [1, 2, 3, 4, 5]
    assert [item.round_numbers for item in items] == [[1, 2], every_round, [1, 2], every_round]
    _, base_64, row_1, row_64 = finished(items)
    assert base_64.noisy is False and base_64.repeats == 5  # max_repeats: the row's cap bounds it
    assert row_1.speedup_vs_eager == pytest.approx(10.0) and row_1.speedup_spread == 0.0
    # p50s 1, 2, 1, 2, 1 ms against a steady 10: ratios 10, 5, 10, 5, 10 (IQR / median 0.5).
    assert row_64.noisy is True and row_64.speedup_vs_eager is None
    assert row_64.speedup_spread == pytest.approx(0.5)
    assert row_64.speedup_unavailable == (
        "speed-up over PyTorch eager fp32 varied by 50% across 5 paired rounds "
        "(benchmark.max_spread 0.125)"
    )


def test_a_steady_row_is_timed_again_until_its_speedup_beside_a_disturbed_baseline_settles(
    monkeypatch,
):
    """A neighbour slows only eager's round 2 (12 ms instead of 4): the ONNX row is steady over
    its two rounds and wants none for itself, but its ratios 4 and 12 disagree, so it is timed
    again beside eager until they settle (4, 12, 4, 4, 4: median 4, spread 0). Timed only while
    eager alone wanted rounds, as before, the two pairs gave no speed-up."""
    timed = fake_rounds(monkeypatch, {("pytorch_eager", 1): [12.0, 4.0, 4.0, 4.0, 4.0],
                                      ("onnxruntime_cuda", 1): [1.0]})  # fmt: skip
    eager, ort = plan("pytorch_eager", []), plan("onnxruntime_cuda", [])
    items = [first_round(eager, 4.0), first_round(ort, 1.0)]
    timed_rounds(items, params(repeats=2, max_repeats=5, extra_seconds=60.0), IMAGES)
    assert timed[2:4] == [("pytorch_eager", 1), ("onnxruntime_cuda", 1)]  # round 3: both
    base, row = finished(items)
    assert row.noisy is False and row.repeats == 5
    assert row.speedup_vs_eager == pytest.approx(4.0) and row.speedup_unavailable is None


def test_a_row_without_a_baseline_that_ran_wants_no_round_for_its_speedup(monkeypatch):
    """More rounds cannot pair with a baseline that failed: a steady row is not timed again."""
    timed = fake_rounds(monkeypatch, {("onnxruntime_cuda", 1): [1.0]})
    ort = plan("onnxruntime_cuda", [])
    items = [first_round(ort, 1.0)]
    timed_rounds(items, params(repeats=2, max_repeats=5, extra_seconds=60.0), IMAGES)
    assert timed == [("onnxruntime_cuda", 1)]  # round 2 only


def test_extra_rounds_with_the_baseline_still_stop_at_the_time_budget(monkeypatch):
    """The baseline timed beside a row costs time too: the round stops at the deadline even
    between the two, and no round starts after it."""
    timed = fake_rounds(monkeypatch, {("pytorch_eager", 1): [10.0],
                                      ("onnxruntime_cuda", 1): [3.0, 1.0]})  # fmt: skip
    eager, ort = plan("pytorch_eager", []), plan("onnxruntime_cuda", [])
    items = [first_round(eager, 10.0), first_round(ort, 1.0)]
    clock = itertools.count(0.0, 1.0)  # every reading one second later
    timed_rounds(items, params(repeats=2, max_repeats=100, extra_seconds=3.0),
                 IMAGES, clock=lambda: next(clock))  # fmt: skip
    # Round 2 reads the clock at 0 and 1 s; the budget runs from 2 to 5 s. Round 3 starts at
    # 3 s, times eager at 4 s and finds the deadline before the ONNX row; no round 4.
    assert timed == [("pytorch_eager", 1), ("onnxruntime_cuda", 1), ("pytorch_eager", 1)]
    assert [item.round_numbers for item in items] == [[1, 2, 3], [1, 2]]
