"""Benchmark statistics and the report: timing, derived columns, headline, CSV and Markdown."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace

import numpy as np
import pytest

from pipeline.bench.backends import RunFacts
from pipeline.bench.report import headline, rows_to_csv, rows_to_markdown
from pipeline.bench.rounds import Measured, batch_of, is_noisy
from pipeline.bench.rows import ROW_FIELDS, BenchRow
from pipeline.bench.run import derive, relate
from pipeline.bench.timing import Timing, paired_ratios, spread, time_call
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
    summary = Timing(2, 9.0, (latencies,)).summary(batch_size=10)
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
    assert timing.iterations == 15 and len(timing.rounds) == 3
    assert timing.summary(1)["repeats"] == 3


def test_summary_reports_the_median_of_repeats_and_their_spread():
    # One disturbed repeat (p50 30 ms) moves the spread, not the reported p50.
    rounds = (np.asarray([10.0, 10.0]), np.asarray([11.0, 11.0]), np.asarray([30.0, 30.0]))
    summary = Timing(0, 1.0, rounds).summary(2)
    assert summary["latency_ms_p50"] == 11.0
    assert summary["latency_ms_p50_min"] == 10.0 and summary["latency_ms_p50_max"] == 30.0
    assert summary["latency_spread"] == pytest.approx(10.0 / 11.0)  # IQR (20.5 - 10.5) / 11
    assert summary["images_per_s"] == pytest.approx(2000.0 / 11.0)


def test_spread_is_unknown_from_one_repeat_and_noise_needs_a_known_spread():
    assert spread(np.asarray([5.0])) is None
    assert spread(np.asarray([4.0, 5.0, 6.0])) == pytest.approx(0.2)  # half the range for 3
    assert is_noisy(0.4, 0.25) and not is_noisy(0.2, 0.25) and not is_noisy(None, 0.25)


def test_more_rounds_settle_the_spread_where_the_range_would_only_grow():
    """Why IQR and not (max - min): a busy neighbour's worst and a lucky best round are left out,
    so re-timing a noisy row can make it steady."""
    few = np.asarray([10.0, 14.0, 10.5])
    many = np.asarray([10.0, 14.0, 10.5, 10.2, 10.1, 10.4, 10.3, 16.0, 10.2, 10.3])
    assert spread(few) > 0.125
    assert spread(many) < 0.125
    assert np.ptp(many) / np.median(many) > np.ptp(few) / np.median(few)


def test_headline_never_crowns_a_noisy_row():
    rows = sample_rows()
    rows[1] = replace(rows[1], noisy=True)  # onnxruntime_cpu fp32 at batch 1, the fastest
    rows[0] = replace(rows[0], latency_spread=0.04)
    top = headline(rows, max_accuracy_drop=0.005)["batch_1"]
    figures = top.as_dict()
    assert figures["best_backend"] == "pytorch_eager" and figures["rows_noisy"] == 1
    assert figures["best_spread"] == 0.04  # the winner's own spread, reported beside it
    text = rows_to_markdown(rows, {"threads": 2}, {"batch_1": top})
    assert text.count("| noisy |") == 2  # the column's title and the marked row


def test_a_row_with_one_good_round_has_no_spread_and_is_never_the_headline():
    rows = sample_rows()
    rows[1] = replace(rows[1], repeats=1, latency_spread=None)  # the fastest eligible at batch 1
    figures = headline(rows, max_accuracy_drop=0.005)["batch_1"].as_dict()
    assert figures["best_backend"] == "pytorch_eager" and figures["rows_not_eligible"] == 4
    rows[0] = replace(rows[0], repeats=1, latency_spread=None)  # the baseline too
    figures = headline(rows, max_accuracy_drop=0.005)["batch_1"].as_dict()
    assert figures["best_backend"] is None


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
    **values,
):
    timed = {"repeats": 3, "latency_spread": 0.05, "noisy": False} if ips else {}
    return BenchRow(
        backend=backend,
        variant=variant,
        batch_size=batch,
        images_per_s=ips,
        top1_accuracy=acc,
        status=status,
        reason=reason,
        providers_used=providers,
        **{**timed, **values},
    )


LOAD = (1.0, 1.6, 1.1)  # a neighbour's load in rounds 1..3: every row of a round slowed alike


def measured(rows: list[BenchRow], peak_keys: dict[int, str] | None = None) -> list[Measured]:
    """Rows as run_benchmark holds them before derive: the peak key and the rounds beside each,
    not in it. A timed row's rounds are its p50 under LOAD, so its figure is its own p50."""
    items = []
    for index, bench_row in enumerate(rows):
        key = (peak_keys or {}).get(index, "cpu")
        facts = RunFacts("ok", "", (), "fp32", key != "cpu", key)
        p50s = []
        if bench_row.images_per_s:
            p50s = [f * bench_row.batch_size * 1000.0 / bench_row.images_per_s for f in LOAD]
        items.append(timed(bench_row, p50s, facts=facts))
    return items


def timed(bench_row: BenchRow, p50s: list[float], numbers=None, facts=None) -> Measured:
    """``bench_row`` with one round per p50 (rounds 1, 2, ... unless ``numbers`` says)."""
    rounds = [np.full(3, p50) for p50 in p50s]
    numbers = list(numbers or range(1, len(p50s) + 1))
    return Measured(plan=None, row=bench_row, facts=facts, rounds=rounds, round_numbers=numbers)


def derived(rows: list[BenchRow], max_spread: float = 0.125) -> list[BenchRow]:
    return derive(measured(rows), flops=1000, peaks={}, max_spread=max_spread)


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


def figures(rows, max_accuracy_drop):
    """The headline as metrics/benchmark.json holds it."""
    return {key: entry.as_dict() for key, entry in headline(rows, max_accuracy_drop).items()}


def test_headline_never_crowns_a_fallback_a_failure_or_an_accuracy_loss():
    top = figures(derived(sample_rows()), max_accuracy_drop=0.005)
    assert top["batch_1"]["best_backend"] == "onnxruntime_cpu"
    assert top["batch_1"]["best_variant"] == "fp32"
    assert top["batch_1"]["speedup_vs_pytorch_eager"] == pytest.approx(5.0)
    assert top["batch_1"]["speedup_spread"] == pytest.approx(0.0, abs=1e-9)
    assert top["batch_1"]["rows_not_eligible"] == 3
    assert top["batch_64"]["best_variant"] == "int8"
    assert top["batch_64"]["speedup_vs_pytorch_eager"] == pytest.approx(3.0)
    assert top["batch_64"]["accuracy_delta_vs_pytorch"] == pytest.approx(-0.002)
    # A looser accuracy budget lets int8 win at batch 1.
    assert figures(derived(sample_rows()), 0.1)["batch_1"]["best_variant"] == "int8"


def test_headline_without_an_eligible_row_says_so():
    rows = [row("onnxruntime_cuda", "fp32", 1, 9000.0, 0.95, "fallback", "no GPU")]
    top = figures(rows, 0.005)["batch_1"]
    assert top["best_backend"] is None and top["speedup_vs_pytorch_eager"] is None
    assert top["best_precision"] is None and top["best_energy_scope"] is None


def test_headline_names_the_precision_that_ran_and_the_energy_scope():
    """metrics diff must not compare GPU-board with CPU-package J/image silently."""
    rows = [
        row("pytorch_eager", "fp32", 8, 100.0, 0.9, energy_method="rapl", joules_per_image=0.5),
        row("onnxruntime_tensorrt", "fp32", 8, 900.0, 0.9, precision="tf32",
            energy_method="nvml_energy_counter", joules_per_image=0.01),
    ]  # fmt: skip
    top = figures(rows, 0.005)["batch_8"]
    assert (top["best_backend"], top["best_precision"]) == ("onnxruntime_tensorrt", "tf32")
    assert top["best_energy_scope"] == "gpu_board"
    assert top["baseline_energy_scope"] == "cpu_package"
    from pipeline.core.records import benchmark_figures

    picked = benchmark_figures({"headline": {"batch_8": top}})
    assert {"headline.batch_8.best_precision", "headline.batch_8.best_energy_scope"} <= set(picked)
    text = rows_to_markdown(rows, {}, headline(rows, 0.005))
    assert "| 8 | onnxruntime_tensorrt fp32 | tf32 |" in text and "(gpu_board) |" in text


def test_a_noisy_baseline_still_gives_speedups_paired_round_by_round():
    """The baseline's rounds disagree (noisy), but each round slowed every row alike (LOAD): the
    per-round ratios agree, so the speed-ups stand (they used to be withheld)."""
    rows = sample_rows()
    rows[0] = replace(rows[0], noisy=True, latency_spread=0.3)  # eager fp32 at batch 1
    rows = derived(rows)
    top = figures(rows, max_accuracy_drop=0.005)
    assert top["batch_1"]["best_backend"] == "onnxruntime_cpu"
    assert top["batch_1"]["speedup_vs_pytorch_eager"] == pytest.approx(5.0)
    assert top["batch_1"]["speedup_unavailable"] is None
    assert rows[3].speedup_vs_eager == pytest.approx(9.0)  # a fallback row is related too
    assert rows[4].speedup_vs_eager is None and rows[4].speedup_unavailable is None  # failed
    text = rows_to_markdown(rows, {"threads": 2}, headline(rows, 0.005))
    assert "| 5.00x ±0% |" in text and "No speed-up" not in text


def pair(base_p50s, row_p50s, base_numbers=None, row_numbers=None, base=None):
    """Eager fp32 and an ONNX row at batch 1, with these rounds, derived (max_spread 0.125)."""
    base = base or row("pytorch_eager", "fp32", 1, 1000.0, 0.95, providers="cpu")
    onnx = row("onnxruntime_cpu", "fp32", 1, 4000.0, 0.95)
    items = [timed(base, base_p50s, base_numbers), timed(onnx, row_p50s, row_numbers)]
    return derive(items, flops=1000, peaks={}, max_spread=0.125)


def test_steady_rows_whose_ratios_disagree_give_no_speedup_and_say_why():
    """Each row alone is steady (IQR / median 0.095), but the load hit eager in rounds 2 and 4
    and the ONNX row in rounds 1 and 3: the ratios spread 19%, so no speed-up is claimed."""
    rows = pair([4.0, 4.4, 4.0, 4.4], [1.1, 1.0, 1.1, 1.0])
    top = headline(rows, 0.005)["batch_1"]
    assert top.best.backend == "onnxruntime_cpu" and top.speedup is None
    assert top.speedup_spread == pytest.approx(0.19, abs=0.005)
    why = "speed-up over PyTorch eager fp32 varied by 19% across 4 paired rounds"
    assert top.speedup_unavailable == f"{why} (benchmark.max_spread 0.125)"
    assert top.as_dict()["speedup_unavailable"] == top.speedup_unavailable
    text = rows_to_markdown(rows, {"threads": 2}, {"batch_1": top})
    assert f"No speed-up at batch 1: {why}" in text
    assert rows[1].speedup_unavailable == top.speedup_unavailable  # the CSV says it too


def test_a_baseline_with_one_good_round_gives_no_speedup():
    one = row("pytorch_eager", "fp32", 1, 1000.0, 0.95, providers="cpu", repeats=1)
    rows = pair([4.0], [1.0, 1.0, 1.0], base=one)
    assert rows[1].speedup_vs_eager is None
    assert rows[1].speedup_unavailable == (
        "the PyTorch eager fp32 row has fewer than 2 good timing rounds"
    )
    failed = row("pytorch_eager", "fp32", 1, None, None, "failed", "RuntimeError: no memory")
    rows = pair([], [1.0, 1.0], base=failed)
    assert rows[1].speedup_unavailable == "no PyTorch eager fp32 row that ran"


def test_a_row_with_no_round_in_common_with_the_baseline_gives_no_speedup():
    """Rounds 1-3 of eager, rounds 4-6 of the row (its first rounds failed): nothing to pair,
    however steady both are."""
    rows = pair([4.0, 4.0, 4.0], [1.0, 1.0, 1.0], row_numbers=[4, 5, 6])
    assert rows[1].speedup_vs_eager is None and rows[1].speedup_spread is None
    assert rows[1].speedup_unavailable == (
        "0 round(s) paired with the PyTorch eager fp32 row (2 needed)"
    )
    rows = pair([4.0, 4.0, 4.0], [1.0, 1.0, 1.0], row_numbers=[3, 4, 5])  # one round shared
    assert rows[1].speedup_vs_eager is None and "1 round(s) paired" in rows[1].speedup_unavailable


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy: p50 of inf - inf
@pytest.mark.parametrize("broken", [0.0, float("inf"), float("nan")])
def test_zero_or_infinite_latencies_never_give_an_infinite_or_nan_speedup(broken):
    """A round whose p50 is 0, inf or NaN says nothing about speed: it is left out of the pairs."""
    rows = pair([4.0, 4.0, 4.0, broken], [1.0, broken, 1.0, 1.0])
    assert rows[1].speedup_vs_eager == pytest.approx(4.0)  # from rounds 1 and 3
    assert rows[1].speedup_spread == 0.0
    rows = pair([broken, broken, 4.0], [1.0, 1.0, broken])
    assert rows[1].speedup_vs_eager is None and rows[1].speedup_spread is None
    assert "0 round(s) paired" in rows[1].speedup_unavailable
    assert paired_ratios({1: 1e300, 2: 4.0}, {1: 1e-300, 2: 1.0}).tolist() == [4.0]  # overflow


def test_derive_relates_rows_to_eager_and_to_the_measured_peak():
    rows = sample_rows()
    rows.append(row("onnxruntime_cuda", "fp16", 64, 1e6, 0.95, providers="CUDAExecutionProvider"))
    peaks = {"cpu": Peak(100.0, "test", {}), "cuda_fp16": Peak(1000.0, "test", {})}
    items = measured(rows, {len(rows) - 1: "cuda_fp16"})
    rows = derive(items, flops=2_000_000, peaks=peaks, max_spread=0.125)
    cpu_int8 = rows[6]
    assert cpu_int8.gflops_per_s == pytest.approx(60.0)
    assert cpu_int8.share_of_peak == pytest.approx(0.6)
    assert cpu_int8.speedup_vs_eager == pytest.approx(3.0)
    assert cpu_int8.top1_delta_vs_pytorch == pytest.approx(-0.002)
    assert rows[-1].peak_gflops == 1000.0  # GPU rows are measured against the GPU's peak
    assert rows[3].peak_gflops == 100.0  # a fallback ran on the CPU: the CPU's peak
    failed = rows[4]
    assert failed.gflops_per_s is None and failed.flops_per_image == 2_000_000
    assert relate(rows) == rows  # relating again changes nothing


def test_csv_has_every_row_and_column_and_markdown_explains_odd_rows():
    rows = derive(measured(sample_rows()), 1000, {"cpu": Peak(1.0, "test", {})}, 0.125)
    parsed = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert len(parsed) == len(rows) and list(parsed[0]) == ROW_FIELDS
    assert parsed[4]["status"] == "failed" and parsed[4]["images_per_s"] == ""
    text = rows_to_markdown(rows, {"threads": 2}, headline(rows, 0.005))
    assert "| 1 | onnxruntime_cpu fp32 |" in text
    assert "onnxruntime_tensorrt fp16 (failed): RuntimeError: no engine" in text
    assert "onnxruntime_cuda fp32 (fallback): CUDA unavailable" in text


def test_the_csv_header_is_the_rows_fields_as_before():
    """The typed row keeps the 36 columns of the dict it replaced, in the same order, with the
    speed-up's spread and why it is missing after the speed-up."""
    assert ROW_FIELDS[:8] == [
        "backend", "variant", "precision", "provider_requested", "providers_used", "status",
        "reason", "note",
    ]  # fmt: skip
    at = ROW_FIELDS.index("speedup_vs_eager")
    assert ROW_FIELDS[at : at + 4] == [
        "speedup_vs_eager", "speedup_spread", "speedup_unavailable", "session_create_ms"
    ]  # fmt: skip
    assert len(ROW_FIELDS) == 38 and ROW_FIELDS[-3:] == [
        "joules_per_image", "energy_method", "energy_reason"
    ]  # fmt: skip


def test_a_pipe_or_a_newline_in_a_value_stays_inside_its_table_cell():
    odd = row("onnxruntime_cpu", "fp|16", 1, 100.0, 0.9, precision="fp16\nx", providers="A|B")
    lines = rows_to_markdown([odd], {}, headline([odd], 0.005)).splitlines()
    tables = [i for i, line in enumerate(lines) if line.startswith("|---")]
    assert len(tables) == 2  # the headline's table and every row's
    for separator in tables:
        header, body = lines[separator - 1], lines[separator + 1]
        assert "fp\\|16" in body and "fp16 x" in body
        assert len(re.findall(r"(?<!\\)\|", body)) == header.count("|")  # one cell each
    assert "A\\|B" in lines[tables[1] + 1]
