"""Every backend at every batch size: timing, memory, FLOP/s against the measured peak, accuracy."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.bench.backends import Backend, OrtBackend, TorchBackend
from pipeline.bench.memory import memory_probe
from pipeline.bench.openvino import openvino_version
from pipeline.bench.report import BASELINE, ROW_FIELDS, speedup_baseline
from pipeline.bench.runtimes import runtime_plans
from pipeline.bench.timing import spread, time_call
from pipeline.catalog import RUNTIMES
from pipeline.energy import measure_for_at_least, meter_from_params
from pipeline.errors import describe
from pipeline.export.safety import UnsafeModelError
from pipeline.hardware.cpu import TRACKED as TRACKED_CPU_FLAGS
from pipeline.hardware.cpu import detect as detect_cpu
from pipeline.hardware.device import resolve_device
from pipeline.hardware.peak import Peak, flops_per_image, peaks_for

if TYPE_CHECKING:  # pydantic stays out of torch-only users (benchmarks/gpu_check.py)
    from pipeline.config import BenchmarkParams, EnergyParams

ACCURACY_BATCH = 256  # batch of the accuracy pass; also the top of its TensorRT profile
FIRST_ROUND = "_first_round_ms"  # a row's first-round latencies until timed_rounds merges them
PEAK_KEY = "_peak_key"  # the backend's peak until derive reads it (not a report column)


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def batch_of(images: np.ndarray, batch_size: int) -> np.ndarray:
    """The first ``batch_size`` test images, repeated when the split is smaller."""
    repeats = -(-batch_size // len(images))
    return np.ascontiguousarray(np.concatenate([images] * repeats)[:batch_size])


@dataclass(frozen=True)
class Spec:
    """A backend not built yet: one session alive at a time, so idle thread pools don't compete."""

    name: str
    variant: str
    provider: str
    memory: str  # host | torch_cuda | ort_cuda
    build: Callable[[], Backend]


def backend_specs(params: BenchmarkParams, model, card, variants: dict[str, Path], threads: int):
    device = resolve_device(params.device)
    norm = card.normalisation
    max_batch = max([*params.batch_sizes, ACCURACY_BATCH])
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    specs = [
        Spec(*TorchBackend.planned(device), lambda: TorchBackend(model, device)),
        Spec(
            *TorchBackend.planned(device, engine=True),
            lambda: TorchBackend(model, device, engine=True),
        ),
    ]
    for variant, path in variants.items():
        for provider in params.providers:

            def build(path=path, variant=variant, provider=provider):
                return OrtBackend(
                    path,
                    variant,
                    provider,
                    threads,
                    norm.mean,
                    norm.std,
                    card.input_shape,
                    max_batch,
                    device.index or 0,
                    capability,
                )

            specs.append(Spec(*OrtBackend.planned(variant, provider), build))
    for runtime in params.runtimes:
        plans = runtime_plans(RUNTIMES[runtime], variants, threads, norm.mean, norm.std)
        specs += [Spec(*planned, build) for planned, build in plans]
    return specs, device


def _row(spec: Spec, batch_size: int, **values) -> dict[str, Any]:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(backend=spec.name, variant=spec.variant, provider_requested=spec.provider)
    row.update(batch_size=batch_size, status="failed", reason="", note="")
    row.update(values)
    return row


def _why(error: Exception) -> str:
    return describe(error)[:300]


def is_noisy(spread: float | None, max_spread: float) -> bool:
    """A row whose repeats disagree by more than ``max_spread`` (relative) is noisy."""
    return spread is not None and spread > max_spread


def row_energy(call, backend, batch_size: int, energy_params, device) -> dict:
    """Joules per image over a window of at least energy.min_window_s of back-to-back calls."""
    where = f"cuda:{device.index or 0}" if backend.on_gpu else "cpu"
    if energy_params is None:
        from pipeline.config import EnergyParams

        energy_params = EnergyParams()
    window = meter_from_params(energy_params, where)
    reading, calls = measure_for_at_least(call, energy_params.min_window_s, window, backend.sync)
    return {
        "joules_per_image": reading.joules_per(calls * batch_size),
        "energy_method": reading.method,
        "energy_reason": reading.reason,
    }


def benchmark_backend(
    spec: Spec, params: BenchmarkParams, device, images, labels, energy_params=None
) -> list[dict]:
    """Rows of one backend; one that cannot be built or run gives `failed` rows, not a crash."""
    probe = memory_probe(spec.memory, device)
    started = time.perf_counter()
    try:
        backend = spec.build()
    except UnsafeModelError:
        raise  # a refused file is an error of the pipeline, not a result
    except Exception as error:
        return [_row(spec, size, reason=_why(error)) for size in params.batch_sizes]
    facts = {
        "precision": backend.precision,
        "status": backend.status,
        "reason": backend.reason,
        "note": backend.note,
        "providers_used": "+".join(backend.providers_used),
        "session_create_ms": (time.perf_counter() - started) * 1000.0,
        PEAK_KEY: backend.peak_key,
    }
    rows = []
    for size in params.batch_sizes:
        probe.start_row()
        try:
            call = backend.bind(batch_of(images, size))
            timing = time_call(
                call, backend.sync, params.warmup, params.min_iterations, params.min_seconds
            )
        except Exception as error:
            rows.append(_row(spec, size, **{**facts, "status": "failed", "reason": _why(error)}))
            continue
        summary = timing.summary(size)  # the first round; merge_rounds adds the others
        summary[FIRST_ROUND] = timing.latencies_ms
        memory = {"peak_memory_mb": probe.peak_mb(), "memory_method": probe.method}
        energy = row_energy(call, backend, size, energy_params, device)
        rows.append(_row(spec, size, **facts, **summary, **memory, **energy))
    # Accuracy last: its larger batches would otherwise inflate the rows' peak memory.
    try:
        predictions = backend.logits(images, ACCURACY_BATCH).argmax(1)
        accuracy = float((predictions == labels).mean())
    except Exception as error:
        accuracy = None
        for row in rows:
            row.update(status="failed", reason=f"accuracy pass: {_why(error)}")
    for row in rows:
        row["top1_accuracy"] = accuracy
    getattr(probe, "close", lambda: None)()
    return rows


def retime_backend(spec: Spec, params: BenchmarkParams, images) -> dict[int, np.ndarray | str]:
    """One more round of timing for one backend: latencies per batch size, or why it failed."""
    try:
        backend = spec.build()
    except UnsafeModelError:
        raise
    except Exception as error:
        return dict.fromkeys(params.batch_sizes, _why(error))
    rounds: dict[int, np.ndarray | str] = {}
    for size in params.batch_sizes:
        try:
            call = backend.bind(batch_of(images, size))
            timing = time_call(
                call, backend.sync, params.warmup, params.min_iterations, params.min_seconds
            )
            rounds[size] = timing.latencies_ms
        except Exception as error:
            rounds[size] = _why(error)
    return rounds


def merge_rounds(row: dict, rounds: list[np.ndarray], max_spread: float) -> None:
    """A row's figures from every round's latencies: p50 as the median of the rounds' p50s, its
    range, spread and noise flag; mean and tails over all the calls."""
    p50s = np.asarray([np.percentile(latencies, 50) for latencies in rounds])
    calls = np.concatenate(rounds)
    p50 = float(np.median(p50s))
    row.update(
        repeats=len(p50s),
        iterations=len(calls),
        latency_ms_mean=float(calls.mean()),
        latency_ms_p90=float(np.percentile(calls, 90)),
        latency_ms_p99=float(np.percentile(calls, 99)),
        latency_ms_p50=p50,
        latency_ms_p50_min=float(p50s.min()),
        latency_ms_p50_max=float(p50s.max()),
        latency_spread=spread(p50s),
        ms_per_image=p50 / row["batch_size"],
        images_per_s=row["batch_size"] * 1000.0 / p50,
    )
    row["noisy"] = is_noisy(row["latency_spread"], max_spread)


def timed_rounds(specs, params: BenchmarkParams, rows: list[dict], images) -> None:
    """Rounds 2..repeats over every backend in turn, so load that comes and goes over tens of
    seconds (a busy neighbour) lands in the spread instead of in one backend's figures."""
    extra: dict[tuple[str, str, int], list[np.ndarray | str]] = {}
    for round_number in range(2, params.repeats + 1):
        print(f"benchmark: timing round {round_number}/{params.repeats}", file=sys.stderr)
        for spec in specs:
            for size, latencies in retime_backend(spec, params, images).items():
                extra.setdefault((spec.name, spec.variant, size), []).append(latencies)
    for row in rows:
        first = row.pop(FIRST_ROUND, None)
        if first is None:
            continue
        later = extra.get((row["backend"], row["variant"], row["batch_size"]), [])
        failures = [item for item in later if isinstance(item, str)]
        if failures:  # the row keeps the rounds that ran; its repeats column says how many
            note = f"{len(failures)} timing round(s) failed: {failures[0]}"
            row["note"] = "; ".join(filter(None, [row["note"], note]))
        timed = [item for item in later if not isinstance(item, str)]
        merge_rounds(row, [first, *timed], params.max_spread)


def derive(rows: list[dict], flops: int, peaks: dict[str, Peak]) -> None:
    """Columns that relate rows: GFLOP/s and share of peak, speed-up and accuracy vs eager."""
    base = {r["batch_size"]: r for r in rows if (r["backend"], r["variant"]) == BASELINE}
    for row in rows:
        row["flops_per_image"] = flops
        peak_key = row.pop(PEAK_KEY, None)  # the backend's own (Backend.peak_key)
        if row["images_per_s"] is None:
            continue
        peak = peaks.get(peak_key)
        row["gflops_per_s"] = flops * row["images_per_s"] / 1e9
        if peak:
            row["peak_gflops"] = peak.gflops
            row["share_of_peak"] = row["gflops_per_s"] / peak.gflops
        ref = base.get(row["batch_size"])
        ref_speed, _ = speedup_baseline(ref)
        if ref_speed:
            row["speedup_vs_eager"] = row["images_per_s"] / ref_speed
        if ref and ref["top1_accuracy"] is not None and row["top1_accuracy"] is not None:
            row["top1_delta_vs_pytorch"] = row["top1_accuracy"] - ref["top1_accuracy"]


def _print(row: dict) -> None:
    speed = f"{row['images_per_s']:>10,.0f} img/s" if row["images_per_s"] else " " * 16
    p50 = f"p50 {row['latency_ms_p50']:.3f} ms" if row["latency_ms_p50"] else ""
    if row["latency_spread"] is not None:
        p50 += f" ±{100 * row['latency_spread']:.0f}%{' NOISY' if row['noisy'] else ''}"
    print(
        f"{row['backend']:<22} {row['variant']:<5} batch {row['batch_size']:>4}: {speed}  "
        f"{p50}  [{row['status']}{': ' + row['reason'] if row['reason'] else ''}]",
        file=sys.stderr,
        flush=True,
    )


def run_benchmark(
    params: BenchmarkParams,
    model,
    card,
    variants: dict[str, Path],
    images,
    labels,
    energy_params: EnergyParams | None = None,
) -> tuple[list[dict], dict[str, Any]]:
    """Rows for every backend x variant x provider x batch size, and the run's context."""
    threads = params.threads or physical_cores()
    # Same thread count for both frameworks, or the comparison measures the thread pools.
    torch.set_num_threads(threads)
    specs, device = backend_specs(params, model, card, variants, threads)
    flops = flops_per_image(model, torch.from_numpy(images[:1]))
    peaks = peaks_for(device, threads)
    rows = []
    for spec in specs:
        rows += benchmark_backend(spec, params, device, images, labels, energy_params)
    timed_rounds(specs, params, rows, images)
    for row in rows:
        _print(row)
    derive(rows, flops, peaks)
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
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                    break
    except OSError:
        pass
    flags = detect_cpu().flags
    return name, " ".join(flag for flag in TRACKED_CPU_FLAGS if flag in flags) or "unknown"


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
