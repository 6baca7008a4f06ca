"""GPU energy from NVML: the total-energy counter, or sampled board power."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.energy.base import SHORT_WINDOW_S, MeterUnavailable, Method, Poller


def visible_gpus(environ: Mapping[str, str] = os.environ) -> list[int | str] | None:
    """NVML selectors (index or UUID) for CUDA_VISIBLE_DEVICES; None when unset (every GPU)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    selectors: list[int | str] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry.isascii() and entry.isdigit():  # int() also takes non-ASCII digits; CUDA does not
            selectors.append(int(entry))
        elif entry.startswith("GPU-"):
            selectors.append(entry)
        elif entry.startswith("MIG-"):
            raise MeterUnavailable("CUDA_VISIBLE_DEVICES names a MIG slice (no energy meter)")
        else:
            break  # CUDA ignores everything from the first invalid entry on ("-1" hides all)
    return selectors


class NvmlGpus:
    """nvmlInit, handles of the chosen GPUs, nvmlShutdown: what both NVML meters share.

    ``gpus`` are NVML indices or UUIDs (None: those CUDA_VISIBLE_DEVICES leaves visible);
    ``position`` keeps only the N-th of them (the N of ``cuda:N``).
    """

    def __init__(
        self, nvml: Any = None, gpus: Sequence[int | str] | None = None, position: int | None = None
    ) -> None:
        self._module = nvml
        self._gpus = gpus
        self._position = position
        self.nvml: Any = None
        self.handles: list[Any] = []
        self.labels: list[dict[str, Any]] = []

    def open(self) -> None:
        nvml = self._module if self._module is not None else _import_pynvml()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            raise MeterUnavailable(f"nvmlInit failed ({error}): no NVIDIA driver?") from None
        self.nvml = nvml
        try:
            selectors = self._selectors()
            self.handles = [self._handle(selector) for selector in selectors]
            self.labels = [
                {"index": selector, "name": _text(nvml.nvmlDeviceGetName(handle))}
                for selector, handle in zip(selectors, self.handles, strict=True)
            ]
        except nvml.NVMLError as error:
            self.close()
            raise MeterUnavailable(f"cannot open the GPUs ({error})") from None
        except MeterUnavailable:
            self.close()
            raise

    def _selectors(self) -> list[int | str]:
        chosen = self._gpus if self._gpus is not None else visible_gpus()
        if chosen is None:
            chosen = list(range(self.nvml.nvmlDeviceGetCount()))
        chosen = list(chosen)
        if self._position is not None:
            if not 0 <= self._position < len(chosen):
                raise MeterUnavailable(f"no visible GPU number {self._position}")
            chosen = [chosen[self._position]]
        if not chosen:
            raise MeterUnavailable("no GPU visible to NVML (or CUDA_VISIBLE_DEVICES hides them)")
        return chosen

    def _handle(self, selector: int | str) -> Any:
        if isinstance(selector, str):
            return self.nvml.nvmlDeviceGetHandleByUUID(selector)
        return self.nvml.nvmlDeviceGetHandleByIndex(selector)

    def read(self, reader_name: str, what: str) -> list[Any]:
        """Call ``nvml.<reader_name>`` on every handle; NVML errors become MeterUnavailable."""
        reader = getattr(self.nvml, reader_name)
        try:
            return [reader(handle) for handle in self.handles]
        except self.nvml.NVMLError_NotSupported:
            raise MeterUnavailable(f"{what} not supported on this GPU") from None
        except self.nvml.NVMLError as error:
            raise MeterUnavailable(f"{what} read failed ({error})") from None

    def close(self) -> None:
        if self.nvml is not None:
            self.nvml.nvmlShutdown()
            self.nvml = None


def _import_pynvml() -> Any:
    try:
        import pynvml  # from the nvidia-ml-py package
    except ImportError:
        raise MeterUnavailable("pynvml (nvidia-ml-py) is not installed") from None
    return pynvml


def _text(name: str | bytes) -> str:
    return name.decode() if isinstance(name, bytes) else name


class NvmlCounterMeter:
    """Difference of NVML's total-energy counters (mJ) over the window, summed over GPUs."""

    method: Method = "nvml_energy_counter"
    min_window_s = SHORT_WINDOW_S
    note = None

    def __init__(self, gpus: NvmlGpus) -> None:
        self._gpus = gpus
        self._start_mj: list[int] = []

    def _read(self) -> list[int]:
        return self._gpus.read("nvmlDeviceGetTotalEnergyConsumption", "total-energy counter")

    def begin(self) -> None:
        self._gpus.open()
        try:
            self._start_mj = self._read()
        except MeterUnavailable:
            self._gpus.close()
            raise

    def finish(self) -> list[dict[str, Any]]:
        try:
            end_mj = self._read()
        finally:
            self._gpus.close()
        if any(end < start for start, end in zip(self._start_mj, end_mj, strict=True)):
            raise MeterUnavailable("energy counter went backwards (driver reloaded?)")
        return [
            {**label, "joules": (end - start) / 1000.0, "method": self.method}
            for label, start, end in zip(self._gpus.labels, self._start_mj, end_mj, strict=True)
        ]


class NvmlPowerMeter:
    """Board power (mW) sampled every ``interval_s`` and integrated by trapezoids."""

    method: Method = "nvml_power_sampling"
    min_window_s = 1.0  # Ampere+ report a 1 s running average: shorter windows are smeared
    note = None

    def __init__(
        self,
        gpus: NvmlGpus,
        interval_s: float = 0.02,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._gpus = gpus
        self._interval_s = interval_s
        self._clock = clock
        self._samples: list[tuple[float, list[float]]] = []

    def _sample(self) -> tuple[float, list[float]]:
        milliwatts = self._gpus.read("nvmlDeviceGetPowerUsage", "power usage")
        return self._clock(), [mw / 1000.0 for mw in milliwatts]

    def begin(self) -> None:
        self._gpus.open()
        try:
            self._samples = [self._sample()]
        except MeterUnavailable:
            self._gpus.close()
            raise
        self._poller = Poller(lambda: self._samples.append(self._sample()), self._interval_s)

    def finish(self) -> list[dict[str, Any]]:
        try:
            self._poller.stop()
            self._samples.append(self._sample())
        finally:
            self._gpus.close()
        return [
            {**label, "joules": _trapezoid(self._samples, gpu), "method": self.method}
            for gpu, label in enumerate(self._gpus.labels)
        ]


def _trapezoid(samples: list[tuple[float, list[float]]], gpu: int) -> float:
    return sum(
        (t1 - t0) * (w0[gpu] + w1[gpu]) / 2.0
        for (t0, w0), (t1, w1) in zip(samples, samples[1:], strict=False)
    )
