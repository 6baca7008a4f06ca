"""The energy window over the first meter that works, and the factories that pick meters."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pipeline.energy.base import EnergyReading, Meter, MeterUnavailable
from pipeline.energy.cpu import POWERCAP_ROOT, CpuTimeEstimate, RaplMeter, read_sysfs_int
from pipeline.energy.nvml import NvmlCounterMeter, NvmlGpus, NvmlPowerMeter

if TYPE_CHECKING:  # pydantic stays out of torch-only users (benchmarks/gpu_check.py)
    from pipeline.core.config import EnergyParams


class EnergyWindow:
    """``start()`` ... ``stop() -> EnergyReading``; or ``with window: ...`` then ``.reading``."""

    def __init__(self, meters: Sequence[Meter], clock: Callable[[], float] = time.perf_counter):
        self._meters = list(meters)
        self._clock = clock
        self._meter: Meter | None = None
        self._failures: list[str] = []
        self._started: float | None = None
        self.reading: EnergyReading | None = None

    def start(self) -> EnergyWindow:
        if self._started is not None:
            raise RuntimeError("energy window already started")
        self._failures, self._meter = [], None
        for meter in self._meters:
            try:
                meter.begin()
            except MeterUnavailable as error:
                self._failures.append(f"{meter.method}: {error}")
                continue
            self._meter = meter
            break
        self._started = self._clock()
        return self

    @property
    def measuring(self) -> bool:
        """Started with a meter that reads: False when every meter was unavailable."""
        return self._started is not None and self._meter is not None

    def stop(self) -> EnergyReading:
        if self._started is None:
            raise RuntimeError("energy window stopped before it was started")
        seconds = self._clock() - self._started
        self._started = None
        self.reading = self._read(self._meter, seconds)
        return self.reading

    def _read(self, meter: Meter | None, seconds: float) -> EnergyReading:
        if meter is None:
            return _unavailable(seconds, self._failures or ["no energy meter configured"])
        try:
            devices = meter.finish()
        except MeterUnavailable as error:
            return _unavailable(seconds, [*self._failures, f"{meter.method}: {error}"])
        tried = f"tried first: {'; '.join(self._failures)}" if self._failures else None
        reason = "; ".join(filter(None, [meter.note, tried])) or None
        return EnergyReading(
            joules=sum(device["joules"] for device in devices),
            seconds=seconds,
            method=meter.method,
            per_device=devices,
            reason=reason,
            short_window=seconds < meter.min_window_s,
        )

    def __enter__(self) -> EnergyWindow:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()  # also on error: releases NVML and the poller thread


def _unavailable(seconds: float, failures: list[str]) -> EnergyReading:
    return EnergyReading(None, seconds, "unavailable", [], reason="; ".join(failures))


def measure_for_at_least(
    fn: Callable[[], object],
    min_seconds: float,
    window: EnergyWindow,
    sync: Callable[[], None] | None = None,
) -> tuple[EnergyReading, int]:
    """Call ``fn`` again and again in one window lasting ``min_seconds``; (reading, calls).

    Joules per call is ``reading.joules_per(calls)``. For GPU work pass ``sync`` (e.g.
    ``torch.cuda.synchronize``): it runs before the window opens, so earlier work stays out,
    and before it closes, so every queued call is paid for inside it.
    """
    if sync is not None:
        sync()  # host-device sync point
    calls = 0
    window.start()
    if not window.measuring:  # no meter to read: the reading says why, and costs no calls
        return window.stop(), calls
    try:
        deadline = time.perf_counter() + min_seconds
        while True:
            fn()
            calls += 1
            if time.perf_counter() >= deadline:
                break
        if sync is not None:
            sync()  # host-device sync point
    except BaseException:
        window.stop()
        raise
    return window.stop(), calls


def gpu_meters(
    nvml: Any = None, gpus: Sequence[int | str] | None = None, position: int | None = None
) -> list[Meter]:
    return [
        NvmlCounterMeter(NvmlGpus(nvml, gpus, position)),
        NvmlPowerMeter(NvmlGpus(nvml, gpus, position)),
    ]


def cpu_meters(
    cpu_watts: float | None = None,
    powercap_root: Path = POWERCAP_ROOT,
    read_int: Callable[[Path], int] = read_sysfs_int,
) -> list[Meter]:
    meters: list[Meter] = [RaplMeter(powercap_root, read_int)]
    if cpu_watts is not None:
        meters.append(CpuTimeEstimate(cpu_watts))
    return meters


def meter_from_params(
    params: EnergyParams,
    device: str,
    *,
    nvml: Any = None,
    powercap_root: Path = POWERCAP_ROOT,
    read_int: Callable[[Path], int] = read_sysfs_int,
) -> EnergyWindow:
    """The window for a resolved torch device ("cpu", "cuda", "cuda:N"); GPU meters for cuda.

    ``energy.cpu_watts`` only applies to CPU runs: it says nothing about a GPU's power.
    """
    device = str(device)
    if device.startswith("cuda"):
        _, _, number = device.partition(":")
        return EnergyWindow(gpu_meters(nvml, position=int(number or 0)))
    return EnergyWindow(cpu_meters(params.cpu_watts, powercap_root, read_int))
