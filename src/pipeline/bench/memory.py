"""Peak memory of one backend, and which counter measured it: the host and PyTorch's CUDA
allocator through pipeline.hardware.memory; onnxruntime's CUDA arena through NVML (the energy
meters' GPU handle), which is why this part lives above the energy layer."""

from __future__ import annotations

import contextlib

import torch

from pipeline.energy.base import MeterUnavailable
from pipeline.energy.nvml import NvmlGpus
from pipeline.hardware.memory import HostMemory, TorchCudaMemory


class NvmlMemory:
    """onnxruntime's CUDA arena is invisible to PyTorch: device memory in use, from NVML.

    ``gpus`` picks the GPU as the energy meters do: ``cuda:N`` is the N-th GPU that
    CUDA_VISIBLE_DEVICES leaves visible, looked up in NVML's own numbering (or by UUID).
    """

    method = "NVML device memory used - used before backend"

    def __init__(self, gpus: NvmlGpus) -> None:
        gpus.open()
        self._gpus = gpus
        self.base = self._used()

    def _used(self) -> int:
        return self._gpus.read("nvmlDeviceGetMemoryInfo", "memory info")[0].used

    def start_row(self) -> None:
        """NVML has no resettable peak; the arena keeps what it grew to, so 'used' is its peak."""

    def peak_mb(self) -> float | None:
        return max(self._used() - self.base, 0) / 2**20

    def close(self) -> None:
        self._gpus.close()


def memory_probe(where: str, device: torch.device, nvml=None):
    """``where``: 'host' (CPU rows), 'torch_cuda' or 'ort_cuda'; falls back to host RSS."""
    if where == "torch_cuda":
        return TorchCudaMemory(device)
    if where == "ort_cuda":
        with contextlib.suppress(MeterUnavailable):
            return NvmlMemory(NvmlGpus(nvml, position=device.index or 0))
    return HostMemory()
