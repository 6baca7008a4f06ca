"""TF32: whether fp32 matmuls and convolutions on this GPU really run on TF32 tensor cores.

PyTorch on Ampere and newer GPUs computes fp32 convolutions in TF32 by default (cuDNN's
``allow_tf32`` starts True) and fp32 matmuls too once the matmul precision is "high". A figure
labelled fp32 from such a run is a TF32 figure, so every label asks this module first.

The switches used are the long-standing ones (``set_float32_matmul_precision``,
``cudnn.allow_tf32``): torch.compile reads those, and torch 2.9+ raises on reading them once the
newer ``fp32_precision`` setters were used. State is read with the newer getters, which answer
after either kind of setter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

TF32_CAPABILITY = (8, 0)  # Ampere: the first GPUs with TF32 tensor cores


def tf32_switches() -> list[str]:
    """The fp32 op kinds PyTorch now lets use TF32 ('matmul', 'conv'), whatever the hardware."""
    flags = {
        "matmul": torch.backends.cuda.matmul.fp32_precision,
        "conv": torch.backends.cudnn.conv.fp32_precision,
    }
    return [op for op, value in flags.items() if value == "tf32"]


def tf32_ops(device: torch.device | str, capability: tuple[int, int] | None = None) -> list[str]:
    """The fp32 op kinds that really compute in TF32 on ``device``: none on CPUs or pre-Ampere.

    ``capability`` defaults to the device's own (CUDA is asked only for a CUDA device).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return []
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    return tf32_switches() if tuple(capability) >= TF32_CAPABILITY else []


def fp32_name(device: torch.device | str, capability: tuple[int, int] | None = None) -> str:
    """'tf32' where fp32 work on ``device`` runs partly in TF32 now, else 'fp32'."""
    return "tf32" if tf32_ops(device, capability) else "fp32"


def set_tf32(enabled: bool) -> None:
    """TF32 on (or off) for both fp32 matmuls and cuDNN convolutions."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


@contextlib.contextmanager
def fp32_math(tf32: bool) -> Iterator[None]:
    """Run fp32 work as true IEEE fp32 (``tf32=False``) or as TF32 meanwhile, then restore."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    set_tf32(tf32)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]
