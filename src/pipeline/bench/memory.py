"""Peak memory of one backend, and which counter measured it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from pipeline.energy.base import MeterUnavailable
from pipeline.energy.nvml import NvmlGpus

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Linux resets the process's peak RSS (VmHWM) to its current RSS on "5" (since 4.0)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class HostMemory:
    """Process RSS: peak during a row (VmHWM after a reset) minus RSS before the backend existed."""

    def __init__(self) -> None:
        self.base_kib = _status_kib("VmRSS")
        self.method = "process RSS peak - RSS before backend (VmHWM)"

    def start_row(self) -> None:
        if not _reset_rss_peak():
            self.method = "process RSS after row - RSS before backend"

    def peak_mb(self) -> float | None:
        key = "VmHWM" if self.method.startswith("process RSS peak") else "VmRSS"
        now = _status_kib(key)
        if now is None or self.base_kib is None:
            return None
        return max(now - self.base_kib, 0) / 1024.0


class TorchCudaMemory:
    """PyTorch's CUDA allocator: max allocated during a row minus allocated before the backend."""

    method = "torch.cuda.max_memory_allocated - allocated before backend"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = torch.cuda.memory_allocated(device)

    def start_row(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        return max(torch.cuda.max_memory_allocated(self.device) - self.base, 0) / 2**20


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
