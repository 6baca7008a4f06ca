"""The benchmark's records: one typed row per backend x variant x provider x batch size, and the
headline per batch size. A row's fields are the CSV's columns, in order; what the timing needs
on the way (the rounds' latencies, the peak a backend is held against) lives beside the row in
bench/run.py, never in it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.bench.timing import spread

BASELINE = ("pytorch_eager", "fp32")  # the (backend, variant) every speed-up divides by
MIN_ROUNDS = 2  # good timing rounds a row needs for a spread, and to be the headline

# What one energy meter measures: J/image of different scopes are different quantities.
ENERGY_SCOPES = {
    "nvml_energy_counter": "gpu_board",
    "nvml_power_sampling": "gpu_board",
    "rapl": "cpu_package",
    "estimate": "cpu_estimate",
}


def energy_scope(method: str | None) -> str | None:
    """gpu_board | cpu_package | cpu_estimate; None where no energy was measured."""
    return ENERGY_SCOPES.get(method or "")


@dataclass(frozen=True)
class BenchRow:
    """One timed combination. None means not measured (a failed row has no figures)."""

    backend: str  # pytorch_eager, pytorch_engine, onnxruntime_<provider>
    variant: str  # the model file or settings timed: fp32, fp16, int8, bf16 (engine autocast)
    precision: str | None = None  # the arithmetic it really computed in
    provider_requested: str = ""  # a torch device type or a benchmark.providers name
    providers_used: str | None = None  # what really ran, '+'-joined as the framework names it
    status: str = "failed"  # ok | partial | fallback | unknown (placement) | failed
    reason: str = ""  # why not ok
    note: str = ""
    batch_size: int = 0
    warmup: int | None = None
    iterations: int | None = None  # timed calls over every good round
    repeats: int | None = None  # good timing rounds
    first_call_ms: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_p50: float | None = None  # median of the rounds' p50s
    latency_ms_p50_min: float | None = None
    latency_ms_p50_max: float | None = None
    latency_spread: float | None = None  # IQR / median of the rounds' p50s
    noisy: bool | None = None
    latency_ms_p90: float | None = None
    latency_ms_p99: float | None = None
    ms_per_image: float | None = None
    images_per_s: float | None = None
    speedup_vs_eager: float | None = None  # median over paired rounds of eager p50 / this p50
    speedup_spread: float | None = None  # IQR / median of those per-round ratios
    speedup_unavailable: str | None = None  # why a row that was timed has no speed-up
    session_create_ms: float | None = None
    peak_memory_mb: float | None = None
    memory_method: str | None = None
    flops_per_image: int | None = None
    gflops_per_s: float | None = None
    peak_gflops: float | None = None
    share_of_peak: float | None = None
    top1_accuracy: float | None = None
    top1_delta_vs_pytorch: float | None = None
    joules_per_image: float | None = None
    energy_method: str | None = None
    energy_reason: str | None = None

    @property
    def is_baseline(self) -> bool:
        return (self.backend, self.variant) == BASELINE

    def with_note(self, text: str) -> BenchRow:
        """This row with ``text`` appended to its note."""
        return dataclasses.replace(self, note="; ".join(filter(None, [self.note, text])))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ROW_FIELDS = [field.name for field in dataclasses.fields(BenchRow)]


def baseline_unusable(base: BenchRow | None) -> str | None:
    """Why no speed-up can be taken against this baseline row, or None. A noisy baseline is
    usable: speed-ups are paired round by round (:func:`paired_speedup`), which is what keeps
    a disturbed baseline from giving absurd ratios (3084x was seen when it was divided by)."""
    if base is None or base.status != "ok" or not base.images_per_s:
        return "no PyTorch eager fp32 row that ran"
    if (base.repeats or 0) < MIN_ROUNDS:
        return "the PyTorch eager fp32 row has fewer than 2 good timing rounds"
    return None


def paired_speedup(ratios: np.ndarray, max_spread: float) -> dict[str, Any]:
    """A row's speed-up columns from the baseline's p50 over the row's, one ratio per round both
    were timed in. A busy neighbour slows both rows of a round alike, so the ratio holds where
    either figure alone moves; ratios that still disagree by more than ``max_spread`` are no
    figure to report."""
    if len(ratios) < MIN_ROUNDS:
        reason = f"{len(ratios)} round(s) paired with the PyTorch eager fp32 row (2 needed)"
        return {"speedup_unavailable": reason}
    varied = spread(ratios)
    if varied > max_spread:
        reason = (
            f"speed-up over PyTorch eager fp32 varied by {varied:.0%} across {len(ratios)} "
            f"paired rounds (benchmark.max_spread {max_spread:g})"
        )
        return {"speedup_spread": varied, "speedup_unavailable": reason}
    return {"speedup_vs_eager": float(np.median(ratios)), "speedup_spread": varied}


# Headline key -> the field of the best row (or of the baseline) it shows.
BEST_FIGURES = {
    "best_backend": "backend",
    "best_variant": "variant",
    "best_precision": "precision",
    "best_providers": "providers_used",
    "best_images_per_s": "images_per_s",
    "best_spread": "latency_spread",  # a re-run lands within about this
    "best_repeats": "repeats",
}
BASELINE_FIGURES = {
    "baseline_images_per_s": "images_per_s",
    "baseline_spread": "latency_spread",
    "baseline_joules_per_image": "joules_per_image",
}


@dataclass(frozen=True)
class Headline:
    """One batch size: the fastest eligible row, against PyTorch eager fp32."""

    batch_size: int
    best: BenchRow | None
    baseline: BenchRow | None
    speedup: float | None  # the best row's paired speed-up over the baseline
    speedup_spread: float | None  # the spread of its per-round ratios
    speedup_unavailable: str | None  # why there is no speed-up while there is a best row
    rows_not_eligible: int
    rows_noisy: int

    @property
    def accuracy_delta(self) -> float | None:
        if self.best is None or self.baseline is None:
            return None
        if self.best.top1_accuracy is None or self.baseline.top1_accuracy is None:
            return None
        return self.best.top1_accuracy - self.baseline.top1_accuracy

    def as_dict(self) -> dict[str, Any]:
        """The record's keys; getattr(None, field, None) is None, so no best gives None figures."""
        best = {key: getattr(self.best, field, None) for key, field in BEST_FIGURES.items()}
        base = {key: getattr(self.baseline, field, None) for key, field in BASELINE_FIGURES.items()}
        method = getattr(self.best, "energy_method", None)
        base_method = getattr(self.baseline, "energy_method", None)
        return {
            **best,
            **base,
            "speedup_vs_pytorch_eager": self.speedup,
            "speedup_spread": self.speedup_spread,
            "speedup_unavailable": self.speedup_unavailable,
            "accuracy_delta_vs_pytorch": self.accuracy_delta,
            "best_joules_per_image": getattr(self.best, "joules_per_image", None),
            "best_energy_method": method,
            "best_energy_scope": energy_scope(method),
            "baseline_energy_scope": energy_scope(base_method),
            "rows_not_eligible": self.rows_not_eligible,
            "rows_noisy": self.rows_noisy,
        }
