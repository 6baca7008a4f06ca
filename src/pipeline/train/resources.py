"""What a run cost: peak memory and achieved FLOP/s."""

from __future__ import annotations

import resource
import sys

import torch

# A training step is one forward and a backward that costs about two forwards.
TRAIN_FLOPS_PER_FORWARD = 3
PEAK_MATH = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float | str]:
    """CUDA: max allocated by PyTorch. CPU: the process's peak resident set (whole process)."""
    if device.type == "cuda":
        return {
            "bytes": float(torch.cuda.max_memory_allocated(device)),
            "method": "torch.cuda.max_memory_allocated",
        }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"bytes": float(peak * scale), "method": "peak RSS of the process"}


def compute_report(
    forward_flops: int,
    images_per_s: float,
    device: torch.device,
    precision_dtype: torch.dtype | None,
) -> dict[str, float | str | None]:
    """Achieved training FLOP/s, and on CUDA its share of a matmul peak measured right now."""
    achieved = TRAIN_FLOPS_PER_FORWARD * forward_flops * images_per_s
    report: dict[str, float | str | None] = {
        "forward_flops_per_image": forward_flops,
        "achieved_gflops": achieved / 1e9,
        "method": "3 x forward FLOPs (torch.utils.flop_counter) x images/s",
        "device_peak_gflops": None,
        "fraction_of_peak": None,
    }
    if device.type == "cuda":
        from pipeline.bench.peak import cuda_peak
        from pipeline.train.tf32 import fp32_name

        # The peak in the arithmetic of the work: fp32 work under TF32 is bounded by TF32's peak.
        math = PEAK_MATH.get(precision_dtype) or fp32_name(device)
        peak = cuda_peak(device, math)
        report.update(
            device_peak_gflops=peak.gflops,
            peak_method=peak.method,
            fraction_of_peak=achieved / 1e9 / peak.gflops,
        )
    else:
        report["peak_note"] = "device peak is measured on CUDA only; see the benchmark for CPU"
    return report
