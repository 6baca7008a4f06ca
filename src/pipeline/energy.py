"""Energy of a window of work, read from the best meter this machine has.

Meters are tried in this order (DESIGN.md, "Energy"); the first that works measures the window:

1. ``nvml_energy_counter``: NVML's total-energy counter (mJ since the driver loaded; Volta+).
2. ``nvml_power_sampling``: NVML board power (mW) sampled in a thread and integrated by
   trapezoids, for GPUs whose counter is NotSupported. Ampere and newer already report a ~1 s
   average power, so windows under a second are smeared (``short_window``).
3. ``rapl``: CPU package energy from Linux powercap, ``intel-rapl:N/energy_uj``. Only the
   top-level package domains count: their subzones (core, uncore, dram) would double count. It
   is the whole package, other processes included, and root-only on kernels patched for
   CVE-2020-8694.
4. ``estimate``: only when ``energy.cpu_watts`` is set and no real meter works (see
   :class:`CpuTimeEstimate`); ``reason`` carries the formula.
5. ``unavailable``: ``joules`` is None and ``reason`` says why each meter failed. Never a number.

A cuda device gets the GPU meters, anything else the CPU ones: a RAPL figure for a GPU run would
leave the GPU out, so a GPU run without NVML reads "unavailable" rather than a partial figure.

Which GPUs: NVML numbers GPUs in PCI bus order and ignores CUDA_VISIBLE_DEVICES, so we read it.
Integer entries are taken as NVML indices (exact with CUDA_DEVICE_ORDER=PCI_BUS_ID, and CUDA's
default order agrees on machines with one GPU model); ``GPU-<uuid>`` entries are looked up by
UUID; a MIG entry makes the GPU meters unavailable (a MIG slice has no energy meter of its own).
``cuda:N`` measures the N-th visible GPU, plain ``cuda`` the first.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from pipeline.config import EnergyParams

Method = Literal["nvml_energy_counter", "nvml_power_sampling", "rapl", "estimate", "unavailable"]

# NVML's counter ticks every ~20-100 ms; shorter windows mostly measure the tick.
SHORT_WINDOW_S = 0.1
POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE_DOMAIN = re.compile(r"intel-rapl:(\d+)")  # intel-rapl:0:1 is a subzone, not matched


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


class _Poller:
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


# --- NVML -------------------------------------------------------------------------------------


def visible_gpus(environ: Mapping[str, str] = os.environ) -> list[int | str] | None:
    """NVML selectors (index or UUID) for CUDA_VISIBLE_DEVICES; None when unset (every GPU)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    selectors: list[int | str] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry.isdigit():
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
        self._poller = _Poller(lambda: self._samples.append(self._sample()), self._interval_s)

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


# --- CPU --------------------------------------------------------------------------------------


def read_sysfs_int(path: Path) -> int:
    return int(path.read_text(encoding="ascii").strip())


@dataclass
class _RaplZone:
    index: int
    name: str
    energy_file: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0


class RaplMeter:
    """CPU package energy (µJ counters) of every top-level RAPL domain, summed.

    The counter wraps at ``max_energy_range_uj`` (~262 kJ: minutes at full load), so a thread
    reads it every ``poll_s`` to catch each wrap; one wrap between reads is undone exactly
    (``end - start + max_range``), more than one cannot be seen, hence the polling.
    """

    method: Method = "rapl"
    min_window_s = SHORT_WINDOW_S
    note = None

    def __init__(
        self,
        powercap_root: Path = POWERCAP_ROOT,
        read_int: Callable[[Path], int] = read_sysfs_int,
        poll_s: float = 10.0,
    ) -> None:
        self._root = Path(powercap_root)
        self._read_int = read_int
        self._poll_s = poll_s
        self._zones: list[_RaplZone] = []

    def _read(self, path: Path) -> int:
        try:
            return self._read_int(path)
        except PermissionError:
            raise MeterUnavailable(
                f"{path} is not readable (root only since CVE-2020-8694)"
            ) from None
        except (OSError, ValueError) as error:
            raise MeterUnavailable(f"cannot read {path} ({error})") from None

    def _package_domains(self) -> list[tuple[int, Path]]:
        try:
            entries = list(self._root.iterdir())
        except OSError:
            entries = []
        domains = [
            (int(match.group(1)), entry)
            for entry in entries
            if (match := _PACKAGE_DOMAIN.fullmatch(entry.name))
        ]
        if not domains:
            raise MeterUnavailable(f"no RAPL package domain under {self._root}")
        return sorted(domains)

    def _open_zone(self, index: int, folder: Path) -> _RaplZone:
        name_file = folder / "name"
        name = name_file.read_text(encoding="ascii").strip() if name_file.is_file() else folder.name
        energy_file = folder / "energy_uj"
        max_range = self._read(folder / "max_energy_range_uj")
        return _RaplZone(index, name, energy_file, max_range, self._read(energy_file))

    def _accumulate(self) -> None:
        for zone in self._zones:
            now = self._read(zone.energy_file)
            delta = now - zone.last_uj
            if delta < 0:  # wrapped past max_energy_range_uj since the last read
                delta += zone.max_range_uj
            zone.total_uj += delta
            zone.last_uj = now

    def begin(self) -> None:
        self._zones = [self._open_zone(index, folder) for index, folder in self._package_domains()]
        self._poller = _Poller(self._accumulate, self._poll_s)

    def finish(self) -> list[dict[str, Any]]:
        self._poller.stop()
        self._accumulate()
        return [
            {"index": z.index, "name": z.name, "joules": z.total_uj / 1e6, "method": self.method}
            for z in self._zones
        ]


def process_cpu_seconds() -> float:
    """User + system CPU time of this process and of the children it has waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuTimeEstimate:
    """``cpu_watts`` x CPU seconds used / logical cores: an estimate, and labelled one.

    ``cpu_watts`` is the package power with every logical core busy (the CPU's TDP is a fair
    stand-in), so a process keeping k of n cores busy for t seconds is charged k/n of it for t
    seconds. Idle power is not charged, so this understates what the wall socket sees.
    Children count only once waited for (e.g. DataLoader workers after they exit).
    """

    method: Method = "estimate"
    min_window_s = SHORT_WINDOW_S

    def __init__(
        self,
        cpu_watts: float,
        cores: int | None = None,
        cpu_seconds: Callable[[], float] = process_cpu_seconds,
    ) -> None:
        self._watts = cpu_watts
        self._cores = cores or os.cpu_count() or 1
        self._cpu_seconds = cpu_seconds
        self._start = 0.0
        self.note: str | None = None

    def begin(self) -> None:
        self._start = self._cpu_seconds()

    def finish(self) -> list[dict[str, Any]]:
        used = self._cpu_seconds() - self._start
        self.note = (
            f"estimate: {used:.3g} CPU-s / {self._cores} logical cores x {self._watts:g} W "
            "(energy.cpu_watts, package power at full load); idle power not counted"
        )
        joules = used / self._cores * self._watts
        return [{"index": None, "name": "cpu", "joules": joules, "method": self.method}]


# --- the window -------------------------------------------------------------------------------


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
