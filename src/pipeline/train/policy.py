"""The device and precision policy: the one place that turns `auto` into concrete choices."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from pipeline.errors import PipelineError


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
            raise DeviceError(f"train.device {requested!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"train.device {requested!r}: only {torch.cuda.device_count()} GPU(s) visible"
            )
    return device


def choose_precision(requested: str, device_type: str, cuda_capability: tuple[int, int] | None):
    """auto: bf16 on Ampere and newer (capability >= 8.0), fp16 on older GPUs, fp32 on CPU.

    CPU stays fp32 under auto: without native bf16 units autocast is many times slower there.
    """
    if requested != "auto":
        if requested == "fp16" and device_type == "cpu":
            raise DeviceError("train.precision 'fp16' needs a GPU; use fp32 or bf16 on CPU")
        return PRECISIONS[requested]
    if device_type != "cuda" or cuda_capability is None:
        return PRECISIONS["fp32"]
    return PRECISIONS["bf16" if cuda_capability >= (8, 0) else "fp16"]


@dataclass(frozen=True)
class Policy:
    device: str
    device_name: str
    precision: str
    channels_last: bool

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_policy(
    device_request: str, precision_request: str
) -> tuple[torch.device, Precision, Policy]:
    device = resolve_device(device_request)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    precision = choose_precision(precision_request, device.type, capability)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        # Let cuDNN pick the fastest kernels for our fixed shapes, and use TF32 tensor cores.
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    policy = Policy(str(device), name, precision.name, channels_last=True)
    return device, precision, policy
