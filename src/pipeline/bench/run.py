"""Every backend at every batch size: timing, memory, FLOP/s against the measured peak, accuracy."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.bench.backends import Backend, OrtBackend, OrtSetup, Plan, RunFacts, TorchBackend
from pipeline.bench.memory import memory_probe
from pipeline.bench.openvino import openvino_version
from pipeline.bench.rounds import Measured, batch_of, finish, timed_rounds, why
from pipeline.bench.rows import BenchRow, baseline_unusable, paired_speedup
from pipeline.bench.runtimes import runtime_plans
from pipeline.bench.timing import paired_ratios, time_call
from pipeline.core.catalog import RUNTIMES
from pipeline.energy import measure_for_at_least, meter_from_params
from pipeline.export.safety import UnsafeModelError
from pipeline.hardware.cpu import TRACKED as TRACKED_CPU_FLAGS
from pipeline.hardware.cpu import cpu_model_name
from pipeline.hardware.cpu import detect as detect_cpu
from pipeline.hardware.device import resolve_device
from pipeline.hardware.peak import Peak, flops_per_image, peaks_for
from pipeline.prepared.types import LabelledChunks

if TYPE_CHECKING:  # pydantic stays out of torch-only users (benchmarks/gpu_check.py)
    from pipeline.core.config import BenchmarkParams, EnergyParams

ACCURACY_BATCH = 256  # batch of the accuracy pass; also the top of an engine's batch profile


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def backend_plans(params: BenchmarkParams, model, card, variants: dict[str, Path], threads: int):
    device = resolve_device(params.device)
    setup = OrtSetup(
        threads=threads,
        mean=tuple(card.normalisation.mean),
        std=tuple(card.normalisation.std),
        image_shape=tuple(card.input_shape),
        max_batch=max([*params.batch_sizes, ACCURACY_BATCH]),
        device_index=device.index or 0,
        capability=torch.cuda.get_device_capability(device) if device.type == "cuda" else None,
    )
    plans = [TorchBackend.plan(model, device), TorchBackend.plan(model, device, engine=True)]
    for variant, path in variants.items():
        plans += [OrtBackend.plan(path, variant, name, setup) for name in params.providers]
    for runtime in params.runtimes:
        plans += runtime_plans(RUNTIMES[runtime], variants, setup)
    return plans, device


def _row(plan: Plan, batch_size: int, facts: RunFacts | None = None, **values) -> BenchRow:
    ran = {}
    if facts is not None:
        ran = {
            "precision": facts.precision,
            "status": facts.status,
            "reason": facts.reason,
            "note": facts.note,
            "providers_used": "+".join(facts.providers_used),
        }
    identity = {"backend": plan.name, "variant": plan.variant, "provider_requested": plan.provider}
    return BenchRow(**identity, batch_size=batch_size, **{**ran, **values})


def row_energy(call, backend: Backend, batch_size: int, energy_params, device) -> dict:
    """Joules per image over a window of at least energy.min_window_s of back-to-back calls."""
    where = f"cuda:{device.index or 0}" if backend.facts.on_gpu else "cpu"
    if energy_params is None:
        from pipeline.core.config import EnergyParams

        energy_params = EnergyParams()
    window = meter_from_params(energy_params, where)
    reading, calls = measure_for_at_least(call, energy_params.min_window_s, window, backend.sync)
    return {
        "joules_per_image": reading.joules_per(calls * batch_size),
        "energy_method": reading.method,
        "energy_reason": reading.reason,
    }


def _first_round(plan, backend, params, size, images, probe, energy_params, device, created):
    """The first round of one batch size: timing, what ran it, its memory and its energy."""
    probe.start_row()
    try:
        call = backend.bind(batch_of(images, size))
        timing = time_call(
            call, backend.sync, params.warmup, params.min_iterations, params.min_seconds
        )
    except Exception as error:
        return Measured(plan, _row(plan, size, backend.facts, status="failed", reason=why(error)))
    facts = backend.facts  # what ran this size's calls (an engine per size may differ)
    energy = row_energy(call, backend, size, energy_params, device)
    row = _row(
        plan,
        size,
        facts,
        warmup=params.warmup,
        first_call_ms=timing.first_call_ms,
        session_create_ms=created,
        peak_memory_mb=probe.peak_mb(),
        memory_method=probe.method,
        **energy,
    )
    return Measured(plan, row, facts, [timing.latencies_ms], round_numbers=[1])


def split_accuracy(backend, test: LabelledChunks) -> float:
    """Top-1 over the whole test split, read a shard at a time (memory flat in its size)."""
    correct = 0
    for images, labels in test.iter_shards():
        correct += int((backend.logits(images, ACCURACY_BATCH).argmax(1) == labels).sum())
    return correct / test.count


def benchmark_backend(
    plan: Plan, params: BenchmarkParams, device, images, test: LabelledChunks, energy_params=None
) -> list[Measured]:
    """Rows of one backend; one that cannot be built or run gives `failed` rows, not a crash.
    ``images``: the first test images, timed; ``test``: the whole split, for accuracy."""
    probe = memory_probe(plan.memory_kind, device)
    started = time.perf_counter()
    try:
        backend = plan.build()
    except UnsafeModelError:
        raise  # a refused file is an error of the pipeline, not a result
    except Exception as error:
        return [Measured(plan, _row(plan, size, reason=why(error))) for size in params.batch_sizes]
    created = (time.perf_counter() - started) * 1000.0
    items = [
        _first_round(plan, backend, params, size, images, probe, energy_params, device, created)
        for size in params.batch_sizes
    ]
    # Accuracy last: its larger batches would otherwise inflate the rows' peak memory.
    try:
        accuracy = {"top1_accuracy": split_accuracy(backend, test)}
    except Exception as error:
        accuracy = {"status": "failed", "reason": f"accuracy pass: {why(error)}"}
        for item in items:
            item.facts = None  # not timed again: a failed row has no figures to refine
    for item in items:
        item.row = replace(item.row, **accuracy)
    getattr(probe, "close", lambda: None)()
    return items


def relate(rows: list[BenchRow]) -> list[BenchRow]:
    """Accuracy against PyTorch eager fp32 of the same batch size. Speed-ups need the rounds
    (:func:`speedup_columns`), so rows keep the ones they were derived with."""
    base = {row.batch_size: row for row in rows if row.is_baseline}
    related = []
    for row in rows:
        ref = base.get(row.batch_size)
        values = {}
        if ref and ref.top1_accuracy is not None and row.top1_accuracy is not None:
            values["top1_delta_vs_pytorch"] = row.top1_accuracy - ref.top1_accuracy
        related.append(replace(row, **values))
    return related


def speedup_columns(item: Measured, base: Measured | None, max_spread: float) -> dict[str, Any]:
    """speedup_vs_eager, its spread, or why there is none: from the rounds the row and the
    baseline of its batch size were both timed in (rows.paired_speedup)."""
    if not item.row.images_per_s:
        return {}  # never timed: nothing to relate
    unusable = baseline_unusable(base.row if base else None)
    if unusable:
        return {"speedup_unavailable": unusable}
    ratios = paired_ratios(base.p50_by_round(), item.p50_by_round())
    return paired_speedup(ratios, max_spread)


def with_peak(row: BenchRow, flops: int, peak: Peak | None) -> BenchRow:
    """GFLOP/s, and its share of the matmul peak of the arithmetic that ran."""
    row = replace(row, flops_per_image=flops)
    if not row.images_per_s:
        return row
    gflops = flops * row.images_per_s / 1e9
    if peak is None:
        return replace(row, gflops_per_s=gflops)
    return replace(
        row, gflops_per_s=gflops, peak_gflops=peak.gflops, share_of_peak=gflops / peak.gflops
    )


def derive(
    items: list[Measured], flops: int, peaks: dict[str, Peak], max_spread: float
) -> list[BenchRow]:
    """The columns that relate rows: GFLOP/s and share of peak, speed-up and accuracy vs eager."""
    bases = {item.row.batch_size: item for item in items if item.row.is_baseline}
    rows = []
    for item in items:
        row = with_peak(item.row, flops, peaks.get(item.facts.peak_key) if item.facts else None)
        speedup = speedup_columns(item, bases.get(item.row.batch_size), max_spread)
        rows.append(replace(row, **speedup))
    return relate(rows)


def _print(row: BenchRow) -> None:
    speed = f"{row.images_per_s:>10,.0f} img/s" if row.images_per_s else " " * 16
    p50 = f"p50 {row.latency_ms_p50:.3f} ms" if row.latency_ms_p50 else ""
    if row.latency_spread is not None:
        p50 += f" ±{100 * row.latency_spread:.0f}%{' NOISY' if row.noisy else ''}"
    print(
        f"{row.backend:<22} {row.variant:<5} batch {row.batch_size:>4}: {speed}  "
        f"{p50}  [{row.status}{': ' + row.reason if row.reason else ''}]",
        file=sys.stderr,
        flush=True,
    )


def run_benchmark(
    params: BenchmarkParams,
    model,
    card,
    variants: dict[str, Path],
    test: LabelledChunks,
    energy_params: EnergyParams | None = None,
) -> tuple[list[BenchRow], dict[str, Any]]:
    """Rows for every backend x variant x provider x batch size, and the run's context. Only
    the first test images (the largest batch) are held; accuracy passes read ``test`` a shard
    at a time."""
    threads = params.threads or physical_cores()
    # Same thread count for both frameworks, or the comparison measures the thread pools.
    torch.set_num_threads(threads)
    plans, device = backend_plans(params, model, card, variants, threads)
    images = test.head(max(params.batch_sizes))  # what every timed call feeds
    flops = flops_per_image(model, torch.from_numpy(images[:1]))
    peaks = peaks_for(device, threads)
    items = []
    for plan in plans:
        items += benchmark_backend(plan, params, device, images, test, energy_params)
    timed_rounds(items, params, images)
    for item in items:
        item.row = finish(item, params.max_spread)
        _print(item.row)
    rows = derive(items, flops, peaks, params.max_spread)
    context = {
        "threads": threads,
        "device": str(device),
        "flops_per_image": flops,
        "peaks": {key: peak.as_dict() for key, peak in peaks.items()},
    }
    return rows, context


def _cpu_facts() -> tuple[str, str]:
    """CPU model name, and the tracked vector extensions (the ones the bf16 policy and the int8
    recipe read, from pipeline.hardware.cpu) that decide fp32/int8 kernel speed."""
    flags = detect_cpu().flags
    isa = " ".join(flag for flag in TRACKED_CPU_FLAGS if flag in flags) or "unknown"
    return cpu_model_name(), isa


def machine_context() -> dict[str, Any]:
    import onnxruntime

    name, isa = _cpu_facts()
    context = {
        "cpu": name,
        "cpu_isa": isa,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino_version(),
    }
    if torch.cuda.is_available():
        context["gpu"] = torch.cuda.get_device_name()
    return context
