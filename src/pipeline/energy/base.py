"""What every meter shares: the reading, the meter protocol, errors and the polling thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Method = Literal["nvml_energy_counter", "nvml_power_sampling", "rapl", "estimate", "unavailable"]

# What each method measures. Joules of different scopes are never added: a GPU board's and a CPU
# package's are different quantities, and an estimate is not a measurement.
ENERGY_SCOPES: dict[str, str] = {
    "nvml_energy_counter": "GPU board",
    "nvml_power_sampling": "GPU board",
    "rapl": "CPU package",
    "estimate": "estimate",
}

# NVML's counter ticks every ~20-100 ms; shorter windows mostly measure the tick.
SHORT_WINDOW_S = 0.1


class MeterUnavailable(RuntimeError):
    """This meter cannot measure here; the message says why and ends up in the reading."""


@dataclass(frozen=True)
class EnergyReading:
    """What one window cost, and which meter says so."""

    joules: float | None
    seconds: float
    method: Method
    per_device: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None  # why unavailable, why an estimate, or why a fallback meter
    short_window: bool = False  # shorter than the meter's update period: treat with suspicion

    @property
    def mean_watts(self) -> float | None:
        if self.joules is None or self.seconds <= 0:
            return None
        return self.joules / self.seconds

    def joules_per(self, count: int) -> float | None:
        """Joules per image, per call...; None when there is no figure to divide."""
        if self.joules is None or count <= 0:
            return None
        return self.joules / count

    def to_dict(self, *, images: int | None = None) -> dict[str, Any]:
        """JSON-ready metrics; with ``images`` also ``joules_per_image`` (what the sweep reads)."""
        result: dict[str, Any] = {
            "joules": self.joules,
            "seconds": self.seconds,
            "mean_watts": self.mean_watts,
            "method": self.method,
            "short_window": self.short_window,
            "reason": self.reason,
            "per_device": [dict(device) for device in self.per_device],
        }
        if images is not None:
            result["images"] = images
            result["joules_per_image"] = self.joules_per(images)
        return result


class Meter(Protocol):
    method: Method
    min_window_s: float
    note: str | None  # set by finish() when the figure needs explaining (the estimate)

    def begin(self) -> None: ...

    def finish(self) -> list[dict[str, Any]]: ...


class Poller:
    """Calls ``poll`` every ``interval_s`` in a daemon thread until stopped; keeps its error."""

    def __init__(self, poll: Callable[[], None], interval_s: float) -> None:
        self._poll = poll
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._error: MeterUnavailable | None = None
        self._thread = threading.Thread(target=self._run, name="energy-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self._poll()
            except MeterUnavailable as error:
                self._error = error
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
