"""CPU energy: RAPL package counters from Linux powercap, or a labelled CPU-time estimate."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.energy.base import SHORT_WINDOW_S, MeterUnavailable, Method, Poller

POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE_DOMAIN = re.compile(r"intel-rapl:(\d+)")  # intel-rapl:0:1 is a subzone, not matched


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
        self._poller = Poller(self._accumulate, self._poll_s)

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
