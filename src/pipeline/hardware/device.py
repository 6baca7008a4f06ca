"""Which device a run asks for: `auto` -> cuda when available, else cpu; a named GPU must exist."""

from __future__ import annotations

import torch

from pipeline.core.errors import PipelineError


class DeviceError(PipelineError):
    pass


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
