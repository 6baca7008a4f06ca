"""Which arithmetic a device runs: `auto` -> bf16, fp16 or fp32 from what the hardware has."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.hardware import cpu as cpu_features
from pipeline.hardware.device import DeviceError


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool

    @property
    def autocast_enabled(self) -> bool:
        return self.autocast_dtype is not None


PRECISIONS = {
    "fp32": Precision("fp32", None, False),
    "bf16": Precision("bf16", torch.bfloat16, False),
    # fp16 gradients underflow without loss scaling.
    "fp16": Precision("fp16", torch.float16, True),
}


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU computes bf16 dot products in hardware (overridable with
    PIPELINE_CPU_FLAGS, see pipeline.hardware.cpu)."""
    return cpu_features.detect().native_bf16


def choose_precision(
    requested: str,
    device_type: str,
    cuda_capability: tuple[int, int] | None,
    cpu_native_bf16: bool = False,
) -> Precision:
    """auto: bf16 on Ampere and newer (capability >= 8.0), fp16 on older GPUs; on the CPU bf16
    only where it has bf16 units (AVX512-BF16/AMX), else fp32.

    Measured for resnet_cifar (width 32, batch 128) training steps: bf16 autocast ran 1.7x fp32
    on an AVX512-BF16 CPU, but 14x slower than fp32 on an AVX2-only one (measured for the
    original design).
    """
    if requested != "auto":
        if requested == "fp16" and device_type == "cpu":
            raise DeviceError("train.precision 'fp16' needs a GPU; use fp32 or bf16 on CPU")
        return PRECISIONS[requested]
    if device_type == "cpu":
        return PRECISIONS["bf16" if cpu_native_bf16 else "fp32"]
    if cuda_capability is None:
        return PRECISIONS["fp32"]
    return PRECISIONS["bf16" if cuda_capability >= (8, 0) else "fp16"]
