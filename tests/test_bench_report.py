"""Benchmark statistics and the report: timing, derived columns, headline, CSV and Markdown."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from pipeline.bench.report import ROW_FIELDS, headline, rows_to_csv, rows_to_markdown
from pipeline.bench.run import PEAK_KEY, batch_of, derive, is_noisy
from pipeline.bench.timing import Timing, spread, time_call
from pipeline.hardware.peak import Peak


def test_time_call_warms_up_then_times_at_least_the_asked_iterations():
    calls, syncs = [], []
    timing = time_call(lambda: calls.append(1), lambda: syncs.append(1), 4, 7, 0.0)
    assert timing.warmup == 4 and timing.iterations == 7
    assert len(calls) == 1 + 4 + 7  # first call, warm-up, timed
    assert len(syncs) >= 1 + 7  # every timed call waits for the device
    assert timing.first_call_ms >= 0 and len(timing.latencies_ms) == 7


def test_time_call_keeps_going_until_min_seconds():
    timing = time_call(lambda: None, lambda: None, 0, 1, 0.05)
    assert timing.iterations > 1


def test_timing_summary_statistics():
    latencies = np.arange(1, 101, dtype=float)  # 1..100 ms
    summary = Timing(2, 100, 9.0, latencies).summary(batch_size=10)
    assert summary["latency_ms_mean"] == pytest.approx(50.5)
    assert summary["latency_ms_p50"] == pytest.approx(50.5)
    assert summary["latency_ms_p90"] == pytest.approx(90.1)
    assert summary["latency_ms_p99"] == pytest.approx(99.01)
    assert summary["ms_per_image"] == pytest.approx(5.05)
    assert summary["images_per_s"] == pytest.approx(10 * 1000 / 50.5)
    assert summary["first_call_ms"] == 9.0 and summary["warmup"] == 2


def test_time_call_repeats_the_timing_loop_after_one_warm_up():
    calls = []
    timing = time_call(lambda: calls.append(1), lambda: None, 2, 5, 0.0, repeats=3)
    assert len(calls) == 1 + 2 + 3 * 5  # first call and warm-up once, then three loops
    assert timing.iterations == 15 and len(timing.repeat_p50_ms) == 3
    assert timing.summary(1)["repeats"] == 3


def test_summary_reports_the_median_of_repeats_and_their_spread():
    # One disturbed repeat (p50 30 ms) moves the spread, not the reported p50.
    latencies = np.asarray([10.0, 10.0, 11.0, 11.0, 30.0, 30.0])
    summary = Timing(0, 6, 1.0, latencies, np.asarray([10.0, 11.0, 30.0])).summary(2)
    assert summary["latency_ms_p50"] == 11.0
    assert summary["latency_ms_p50_min"] == 10.0 and summary["latency_ms_p50_max"] == 30.0
    assert summary["latency_spread"] == pytest.approx(20.0 / 11.0)
    assert summary["images_per_s"] == pytest.approx(2000.0 / 11.0)


def test_spread_is_unknown_from_one_repeat_and_noise_needs_a_known_spread():
    assert spread(np.asarray([5.0])) is None
    assert spread(np.asarray([4.0, 5.0, 6.0])) == pytest.approx(0.4)
    assert is_noisy(0.4, 0.25) and not is_noisy(0.2, 0.25) and not is_noisy(None, 0.25)


def test_headline_never_crowns_a_noisy_row():
    rows = sample_rows()
    rows[1]["noisy"] = True  # onnxruntime_cpu fp32 at batch 1, the fastest eligible row
    rows[0]["latency_spread"] = 0.04
    top = headline(rows, max_accuracy_drop=0.005)["batch_1"]
    assert top["best_backend"] == "pytorch_eager" and top["rows_noisy"] == 1
    assert top["best_spread"] == 0.04  # the winner's own spread, reported beside it
    text = rows_to_markdown(rows, {"threads": 2}, {"batch_1": top})
    assert text.count("| noisy |") == 2  # the column's title and the marked row


def test_batch_of_repeats_a_small_split():
    images = np.arange(3 * 2).reshape(3, 1, 1, 2).astype(np.uint8)
    batch = batch_of(images, 7)
    assert batch.shape == (7, 1, 1, 2) and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[3], images[0])


def row(
    backend,
    variant,
    batch,
    ips,
    acc,
    status="ok",
    reason="",
    providers="CPUExecutionProvider",
    peak="cpu",
):
    values = dict.fromkeys(ROW_FIELDS)
    values[PEAK_KEY] = peak  # what the backend says (Backend.peak_key)
    values.update(
        backend=backend,
        variant=variant,
        batch_size=batch,
        images_per_s=ips,
        top1_accuracy=acc,
        status=status,
        reason=reason,
        note="",
        providers_used=providers,
    )
    return values


def sample_rows():
    return [
        row("pytorch_eager", "fp32", 1, 1000.0, 0.95, providers="cpu"),
        row("onnxruntime_cpu", "fp32", 1, 5000.0, 0.95),
        row("onnxruntime_cpu", "int8", 1, 6000.0, 0.90),  # fast, but 5 points worse
        row("onnxruntime_cuda", "fp32", 1, 9000.0, 0.95, "fallback", "CUDA unavailable"),
        row("onnxruntime_tensorrt", "fp16", 1, None, None, "failed", "RuntimeError: no engine"),
        row("pytorch_eager", "fp32", 64, 10000.0, 0.95, providers="cpu"),
        row("onnxruntime_cpu", "int8", 64, 30000.0, 0.948),
        row("onnxruntime_cuda", "int8", 64, 90000.0, 0.948, "fallback", "CUDA unavailable"),
    ]


def test_headline_never_crowns_a_fallback_a_failure_or_an_accuracy_loss():
    top = headline(sample_rows(), max_accuracy_drop=0.005)
    assert top["batch_1"]["best_backend"] == "onnxruntime_cpu"
    assert top["batch_1"]["best_variant"] == "fp32"
    assert top["batch_1"]["speedup_vs_pytorch_eager"] == pytest.approx(5.0)
    assert top["batch_1"]["rows_not_eligible"] == 3
    assert top["batch_64"]["best_variant"] == "int8"
    assert top["batch_64"]["speedup_vs_pytorch_eager"] == pytest.approx(3.0)
    assert top["batch_64"]["accuracy_delta_vs_pytorch"] == pytest.approx(-0.002)
    # A looser accuracy budget lets int8 win at batch 1.
    assert headline(sample_rows(), 0.1)["batch_1"]["best_variant"] == "int8"


def test_headline_without_an_eligible_row_says_so():
    rows = [row("onnxruntime_cuda", "fp32", 1, 9000.0, 0.95, "fallback", "no GPU")]
    top = headline(rows, 0.005)["batch_1"]
    assert top["best_backend"] is None and top["speedup_vs_pytorch_eager"] is None


def test_a_noisy_baseline_gives_no_speedup_and_says_why():
    rows = sample_rows()
    rows[0]["noisy"] = True  # eager fp32 at batch 1: its repeats disagreed
    derive(rows, flops=1000, peaks={})
    top = headline(rows, max_accuracy_drop=0.005)
    assert top["batch_1"]["best_backend"] == "onnxruntime_cpu"  # the best row still stands
    assert top["batch_1"]["speedup_vs_pytorch_eager"] is None
    assert "noisy" in top["batch_1"]["speedup_unavailable"]
    assert all(r["speedup_vs_eager"] is None for r in rows if r["batch_size"] == 1)
    assert top["batch_64"]["speedup_vs_pytorch_eager"] == pytest.approx(3.0)
    assert top["batch_64"]["speedup_unavailable"] is None
    text = rows_to_markdown(rows, {"threads": 2}, top)
    assert "No speed-up at batch 1: the PyTorch eager fp32 row was noisy" in text
    assert "No speed-up at batch 64" not in text


def test_derive_relates_rows_to_eager_and_to_the_measured_peak():
    rows = sample_rows()
    gpu = row(
        "onnxruntime_cuda",
        "fp16",
        64,
        1e6,
        0.95,
        providers="CUDAExecutionProvider",
        peak="cuda_fp16",
    )
    rows.append(gpu)
    peaks = {"cpu": Peak(100.0, "test", {}), "cuda_fp16": Peak(1000.0, "test", {})}
    derive(rows, flops=2_000_000, peaks=peaks)
    cpu_int8 = rows[6]
    assert cpu_int8["gflops_per_s"] == pytest.approx(60.0)
    assert cpu_int8["share_of_peak"] == pytest.approx(0.6)
    assert cpu_int8["speedup_vs_eager"] == pytest.approx(3.0)
    assert cpu_int8["top1_delta_vs_pytorch"] == pytest.approx(-0.002)
    assert gpu["peak_gflops"] == 1000.0  # GPU rows are measured against the GPU's peak
    assert rows[3]["peak_gflops"] == 100.0  # a fallback ran on the CPU: the CPU's peak
    failed = rows[4]
    assert failed["gflops_per_s"] is None and failed["flops_per_image"] == 2_000_000
    assert all(set(r) == set(ROW_FIELDS) for r in rows)  # the peak key is no report column


def test_csv_has_every_row_and_column_and_markdown_explains_odd_rows():
    rows = sample_rows()
    derive(rows, 1000, {"cpu": Peak(1.0, "test", {})})
    parsed = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert len(parsed) == len(rows) and list(parsed[0]) == ROW_FIELDS
    assert parsed[4]["status"] == "failed" and parsed[4]["images_per_s"] == ""
    text = rows_to_markdown(rows, {"threads": 2}, headline(rows, 0.005))
    assert "| 1 | onnxruntime_cpu fp32 |" in text
    assert "onnxruntime_tensorrt fp16 (failed): RuntimeError: no engine" in text
    assert "onnxruntime_cuda fp32 (fallback): CUDA unavailable" in text


def test_rounds_go_over_every_backend_in_turn_and_merge_into_the_row():
    from pipeline.bench.run import FIRST_ROUND, Spec, timed_rounds
    from pipeline.config import BenchmarkParams

    built = []

    class Fake:
        def __init__(self, name):
            built.append(name)

        def bind(self, batch):
            return lambda: None

        def sync(self):
            pass

    def broken():
        built.append("b")
        raise RuntimeError("no device")

    specs = [
        Spec("a", "fp32", "cpu", "host", lambda: Fake("a")),
        Spec("b", "fp32", "cpu", "host", broken),
    ]
    params = BenchmarkParams(
        batch_sizes=[1], warmup=0, min_iterations=3, min_seconds=0.0, repeats=3
    )
    rows = [row("a", "fp32", 1, 1000.0, 0.9), row("b", "fp32", 1, 1000.0, 0.9)]
    for r in rows:  # round 1: far slower than the no-op rounds after it
        r[FIRST_ROUND] = np.full(3, 1000.0)
    timed_rounds(specs, params, rows, np.zeros((2, 1, 2, 2), np.uint8))
    assert built == ["a", "b", "a", "b"]  # round 2 then round 3, every backend in each
    first, second = rows
    assert first["repeats"] == 3 and first["latency_ms_p50_max"] == 1000.0
    assert first["iterations"] == 9 and FIRST_ROUND not in first
    assert first["latency_spread"] > params.max_spread and first["noisy"] is True
    assert second["repeats"] == 1 and second["latency_spread"] is None and not second["noisy"]
    assert "2 timing round(s) failed: RuntimeError: no device" in second["note"]
