"""Run every backend at every batch size, with each backend's accuracy on the whole test split."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from pipeline.bench.backends import OrtBackend, TorchBackend
from pipeline.bench.timing import time_call
from pipeline.config import BenchmarkParams
from pipeline.train.policy import resolve_device


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


def make_backends(params: BenchmarkParams, model, card, onnx_path, threads: int) -> list:
    norm = card["normalisation"]
    backends = [TorchBackend(model, resolve_device(params.device))]
    for provider in params.providers:
        backends.append(OrtBackend(onnx_path, "fp32", provider, threads, norm["mean"], norm["std"]))
    return backends


def benchmark_backend(backend, params: BenchmarkParams, images, labels) -> list[dict]:
    predictions = backend.logits(images).argmax(1)
    accuracy = float((predictions == labels).mean())
    rows = []
    for batch_size in params.batch_sizes:
        call = backend.bind(batch_of(images, batch_size))
        timing = time_call(
            call, backend.sync, params.warmup, params.min_iterations, params.min_seconds
        )
        row = {
            "backend": backend.name,
            "variant": backend.variant,
            "provider_requested": backend.provider,
            "providers_used": "+".join(backend.providers_used),
            "status": backend.status,
            "reason": backend.reason,
            "batch_size": batch_size,
            **timing.summary(batch_size),
            "top1_accuracy": accuracy,
        }
        rows.append(row)
        print(
            f"{backend.name:<24} {backend.variant:<5} batch {batch_size:>4}: "
            f"{row['images_per_s']:>10,.0f} img/s  p50 {row['latency_ms_p50']:.3f} ms  "
            f"[{backend.status}]",
            file=sys.stderr,
            flush=True,
        )
    return rows


def run_benchmark(params: BenchmarkParams, model, card, onnx_path, images, labels) -> list[dict]:
    threads = params.threads or physical_cores()
    # Same thread count for both backends, or the comparison measures the thread pools.
    torch.set_num_threads(threads)
    rows = []
    for backend in make_backends(params, model, card, onnx_path, threads):
        rows.extend(benchmark_backend(backend, params, images, labels))
    return rows
