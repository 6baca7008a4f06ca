"""What a training run achieved: FLOP/s, and its share of the device's measured peak."""

from __future__ import annotations

import torch

from pipeline.hardware import peak
from pipeline.hardware.tf32 import fp32_name

# A training step is one forward and a backward that costs about two forwards.
TRAIN_FLOPS_PER_FORWARD = 3
PEAK_MATH = {torch.bfloat16: "bf16", torch.float16: "fp16"}


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
        # The peak in the arithmetic of the work: fp32 work under TF32 is bounded by TF32's peak.
        math = PEAK_MATH.get(precision_dtype) or fp32_name(device)
        measured = peak.cuda_peak(device, math)
        report.update(
            device_peak_gflops=measured.gflops,
            peak_method=measured.method,
            fraction_of_peak=achieved / 1e9 / measured.gflops,
        )
    else:
        report["peak_note"] = "device peak is measured on CUDA only; see the benchmark for CPU"
    return report
