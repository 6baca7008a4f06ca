"""Training's policy: the device and precision the hardware layer resolves, plus what is
training's own (data placement, determinism, cuDNN tuning), recorded together as one Policy."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from pipeline.hardware import cpu as cpu_features
from pipeline.hardware.device import resolve_device
from pipeline.hardware.memory import dataset_fits_on_device
from pipeline.hardware.precision import choose_precision, cpu_has_native_bf16
from pipeline.hardware.tf32 import set_tf32, tf32_ops

if TYPE_CHECKING:  # pydantic stays out of torch-only users (benchmarks/gpu_check.py)
    from pipeline.core.config import TrainParams


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
