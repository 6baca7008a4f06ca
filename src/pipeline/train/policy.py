"""The device and precision policy: the one place that turns `auto` into concrete choices."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from pipeline.errors import PipelineError
from pipeline.hardware import cpu as cpu_features
from pipeline.train.batches import dataset_fits_on_device
from pipeline.train.tf32 import set_tf32, tf32_ops

if TYPE_CHECKING:  # pydantic stays out of torch-only users (benchmarks/gpu_check.py)
    from pipeline.config import TrainParams


class DeviceError(PipelineError):
    pass


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


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {requested!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {requested!r}: only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return device


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


@dataclass(frozen=True)
class Policy:
    device: str
    device_name: str
    precision: str  # fp32 | tf32 (fp32 on TF32 tensor cores) | bf16 | fp16
    tf32: str  # fp32 op kinds computed in TF32 (also outside autocast): "matmul+conv" | "off"
    channels_last: bool
    data_on_device: bool
    compile: bool
    deterministic: bool
    cpu: str  # the CPU profile the choices were made for, e.g. "AVX2" or "AVX-512 VNNI bf16"

    def as_dict(self) -> dict:
        return asdict(self)


def make_deterministic() -> None:
    """Same inputs, same weights. cuBLAS reads its workspace setting when CUDA starts."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def tune_cuda() -> None:
    # Let cuDNN pick the fastest kernels for our fixed shapes, and use TF32 tensor cores.
    torch.backends.cudnn.benchmark = True
    set_tf32(True)


def resolve_policy(params: TrainParams, train_images: torch.Tensor | None = None):
    """(device, precision, policy); data_on_device=auto asks whether ``train_images`` fit."""
    if params.deterministic:
        make_deterministic()
    device = resolve_device(params.device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    precision = choose_precision(
        params.precision, device.type, capability, device.type == "cpu" and cpu_has_native_bf16()
    )
    if device.type == "cuda" and not params.deterministic:
        tune_cuda()
    on_device = params.data_on_device
    if on_device == "auto":
        on_device = train_images is None or dataset_fits_on_device(train_images, device)
    tf32 = tf32_ops(device, capability)
    policy = Policy(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        precision="tf32" if precision.name == "fp32" and tf32 else precision.name,
        tf32="+".join(tf32) or "off",
        channels_last=params.channels_last,
        data_on_device=bool(on_device),
        compile=params.compile,
        deterministic=params.deterministic,
        cpu=cpu_features.detect().profile,
    )
    return device, precision, policy
