"""Timing rounds after the first: every backend in turn, re-checked against what ran the first,
then more rounds for noisy rows (the baseline first) within the time budget."""

from __future__ import annotations

import itertools

import numpy as np

from pipeline.bench.backends import Plan, RunFacts
from pipeline.bench.rounds import Measured, finish, timed_rounds
from pipeline.bench.rows import BenchRow
from pipeline.core.config import BenchmarkParams

GPU = RunFacts("ok", "", ("CUDAExecutionProvider",), "fp32", True, "cuda_fp32")
CPU = RunFacts("fallback", "CUDA failed", ("CPUExecutionProvider",), "fp32", False, "cpu")
IMAGES = np.zeros((2, 1, 2, 2), np.uint8)


class Fake:
    """A backend whose calls take no time and whose session reports ``facts``."""

    def __init__(self, facts: RunFacts, log: list[str], name: str):
        self.facts = facts
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
    return Measured(p, row, facts, [np.full(3, ms)])


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
    # Round 2 goes over all three; then only the noisy ones, the baseline first in each round.
    assert log[:3] == ["onnxruntime_cuda", "onnxruntime_cpu", "pytorch_eager"]
    assert log[3:] == ["pytorch_eager", "onnxruntime_cuda"] * 3
    rows = [finish(item, 0.125) for item in items]
    # p50s 50, 10, 10, 10, 10: the IQR leaves the disturbed first round out, so both settle.
    assert [row.repeats for row in rows] == [5, 2, 5]
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
