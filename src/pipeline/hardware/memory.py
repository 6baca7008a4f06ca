"""Peak memory, and which counter measured it: a whole run's peak (training) and a stretch's
peak above a baseline (one benchmark row), on the host or in PyTorch's CUDA allocator."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


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


def dataset_fits_on_device(images: torch.Tensor, device: torch.device) -> bool:
    """CPU: the tensors are already in memory. CUDA: under half the free memory."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() < free // 2


def available_memory_bytes() -> int | None:
    """What the kernel says can still be allocated without swapping (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


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
