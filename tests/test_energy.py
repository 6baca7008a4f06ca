"""Energy meters: NVML and powercap are faked (this machine has neither); the rest is real."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.core.config import EnergyParams
from pipeline.energy import (
    CpuTimeEstimate,
    EnergyWindow,
    NvmlCounterMeter,
    NvmlGpus,
    NvmlPowerMeter,
    RaplMeter,
    gpu_meters,
    measure_for_at_least,
    meter_from_params,
)

# --- a fake NVML ------------------------------------------------------------------------------


@dataclass
class FakeGpu:
    name: str
    uuid: str
    energy_mj: int = 0
    power_mw: int = 0
    counter_supported: bool = True


class FakeNvml:
    """The slice of pynvml that pipeline.energy calls, with NVML's error classes."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's name)
        pass

    def __init__(self, *gpus: FakeGpu, driver: bool = True) -> None:
        self.gpus = list(gpus)
        self.driver = driver
        self.open_sessions = 0
        self.power_reads = 0
        self._lock = threading.Lock()

    def nvmlInit(self) -> None:
        if not self.driver:
            raise self.NVMLError("Driver Not Loaded")
        self.open_sessions += 1

    def nvmlShutdown(self) -> None:
        self.open_sessions -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        return next(gpu for gpu in self.gpus if gpu.uuid == uuid)

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> bytes:
        return gpu.name.encode()  # older pynvml returns bytes

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        if not gpu.counter_supported:
            raise self.NVMLError_NotSupported("Not Supported")
        return gpu.energy_mj

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        with self._lock:
            self.power_reads += 1
        return gpu.power_mw


def three_gpus() -> FakeNvml:
    return FakeNvml(
        FakeGpu("H100", "GPU-aaa", energy_mj=10_000),
        FakeGpu("H100", "GPU-bbb", energy_mj=70_000),
        FakeGpu("A100", "GPU-ccc", energy_mj=5_000),
    )


@pytest.fixture(autouse=True)
def every_gpu_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


class StepClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- NVML total-energy counter ----------------------------------------------------------------


def test_counter_sums_the_difference_over_every_gpu() -> None:
    nvml = three_gpus()
    window = EnergyWindow(gpu_meters(nvml)).start()
    nvml.gpus[0].energy_mj += 2_500
    nvml.gpus[1].energy_mj += 1_500
    nvml.gpus[2].energy_mj += 250
    reading = window.stop()

    assert reading.method == "nvml_energy_counter"
    assert reading.joules == pytest.approx(4.25)
    assert [(d["index"], d["name"], d["joules"]) for d in reading.per_device] == [
        (0, "H100", 2.5),
        (1, "H100", 1.5),
        (2, "A100", 0.25),
    ]
    assert reading.reason is None
    assert nvml.open_sessions == 0  # nvmlShutdown balanced every nvmlInit


def test_counter_respects_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-aaa")
    nvml = three_gpus()
    window = EnergyWindow(gpu_meters(nvml)).start()
    for gpu in nvml.gpus:
        gpu.energy_mj += 1_000
    reading = window.stop()

    assert [d["index"] for d in reading.per_device] == [2, "GPU-aaa"]
    assert reading.joules == pytest.approx(2.0)


def test_cuda_n_measures_the_nth_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    nvml = three_gpus()
    window = meter_from_params(EnergyParams(), "cuda:1", nvml=nvml).start()
    nvml.gpus[1].energy_mj += 3_000
    nvml.gpus[2].energy_mj += 9_000  # visible, but not the GPU this run uses
    reading = window.stop()

    assert reading.joules == pytest.approx(3.0)
    assert [d["index"] for d in reading.per_device] == [1]


@pytest.mark.parametrize(
    ("visible", "why"),
    [
        ("-1", "no GPU visible"),
        ("", "no GPU visible"),
        ("\u0661", "no GPU visible"),  # an Arabic-Indic 1: CUDA stops at it, as at any bad entry
        ("MIG-1234", "MIG slice"),
    ],
)
def test_hidden_or_mig_gpus_read_unavailable(
    monkeypatch: pytest.MonkeyPatch, visible: str, why: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    nvml = three_gpus()
    reading = EnergyWindow(gpu_meters(nvml)).start().stop()

    assert reading.joules is None
    assert reading.method == "unavailable"
    assert why in reading.reason
    assert nvml.open_sessions == 0


def test_counter_going_backwards_is_not_turned_into_a_number() -> None:
    nvml = three_gpus()
    window = EnergyWindow([NvmlCounterMeter(NvmlGpus(nvml, gpus=[0]))]).start()
    nvml.gpus[0].energy_mj = 0  # driver reloaded mid-window
    reading = window.stop()

    assert reading.joules is None
    assert "went backwards" in reading.reason


# --- NVML power sampling ----------------------------------------------------------------------


def test_unsupported_counter_falls_back_to_power_sampling() -> None:
    nvml = FakeNvml(
        FakeGpu("V100", "GPU-a", power_mw=100_000, counter_supported=False),
        FakeGpu("V100", "GPU-b", power_mw=50_000, counter_supported=False),
    )
    clock = StepClock()
    meters = [
        NvmlCounterMeter(NvmlGpus(nvml)),
        NvmlPowerMeter(NvmlGpus(nvml), interval_s=3600, clock=clock),  # no thread samples
    ]
    window = EnergyWindow(meters).start()
    clock.now = 2.0
    nvml.gpus[0].power_mw = 200_000  # 100 W -> 200 W over 2 s: trapezoid 300 J
    reading = window.stop()

    assert reading.method == "nvml_power_sampling"
    assert [d["joules"] for d in reading.per_device] == [pytest.approx(300.0), pytest.approx(100.0)]
    assert reading.joules == pytest.approx(400.0)
    assert "not supported" in reading.reason  # says why the counter was not used
    assert nvml.open_sessions == 0


def test_power_sampling_thread_integrates_a_steady_load() -> None:
    nvml = FakeNvml(FakeGpu("T4", "GPU-t", power_mw=120_000, counter_supported=False))
    window = EnergyWindow([NvmlPowerMeter(NvmlGpus(nvml), interval_s=0.005)]).start()
    time.sleep(0.3)
    reading = window.stop()

    assert nvml.power_reads > 10  # the background thread did sample
    assert reading.joules == pytest.approx(120.0 * reading.seconds, rel=0.05)
    assert reading.mean_watts == pytest.approx(120.0, rel=0.05)
    assert reading.short_window  # under NVML's 1 s power average


# --- no NVML ----------------------------------------------------------------------------------


def test_no_driver_reads_unavailable_with_the_reason() -> None:
    reading = EnergyWindow(gpu_meters(FakeNvml(driver=False))).start().stop()

    assert reading.joules is None
    assert reading.mean_watts is None
    assert reading.joules_per(100) is None
    assert reading.reason.count("nvmlInit failed") == 2  # both NVML meters tried
    as_json = json.loads(json.dumps(reading.to_dict(images=100)))
    assert as_json["joules"] is None and as_json["joules_per_image"] is None
    assert as_json["method"] == "unavailable"


def test_missing_pynvml_reads_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    reading = EnergyWindow(gpu_meters()).start().stop()

    assert reading.joules is None
    assert "nvidia-ml-py" in reading.reason


def test_cpu_watts_gives_no_estimate_for_a_gpu_run() -> None:
    params = EnergyParams(cpu_watts=65.0)
    reading = meter_from_params(params, "cuda", nvml=FakeNvml(driver=False)).start().stop()

    assert reading.method == "unavailable"
    assert reading.joules is None


# --- RAPL -------------------------------------------------------------------------------------


def add_zone(root: Path, folder: str, name: str, energy_uj: int, max_uj: int = 10**9) -> Path:
    zone = root / folder
    zone.mkdir(parents=True)
    (zone / "name").write_text(f"{name}\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages, plus what must not be counted: a subzone and the MMIO twin of package 0."""
    root = tmp_path / "powercap"
    add_zone(root, "intel-rapl:0", "package-0", 1_000_000)
    add_zone(root, "intel-rapl:1", "package-1", 5_000_000)
    add_zone(root, "intel-rapl:0:0", "core", 0)
    add_zone(root, "intel-rapl-mmio:0", "package-0", 0)
    return root


def set_energy(root: Path, folder: str, energy_uj: int) -> None:
    (root / folder / "energy_uj").write_text(f"{energy_uj}\n")


def test_rapl_sums_package_domains_only(powercap: Path) -> None:
    window = meter_from_params(EnergyParams(), "cpu", powercap_root=powercap).start()
    set_energy(powercap, "intel-rapl:0", 3_000_000)
    set_energy(powercap, "intel-rapl:1", 5_500_000)
    set_energy(powercap, "intel-rapl:0:0", 9_000_000)
    set_energy(powercap, "intel-rapl-mmio:0", 9_000_000)
    reading = window.stop()

    assert reading.method == "rapl"
    assert reading.joules == pytest.approx(2.5)
    assert [(d["name"], d["joules"]) for d in reading.per_device] == [
        ("package-0", 2.0),
        ("package-1", 0.5),
    ]


def test_rapl_undoes_a_wrap_around(tmp_path: Path) -> None:
    add_zone(tmp_path, "intel-rapl:0", "package-0", 999_900, max_uj=1_000_000)
    window = EnergyWindow([RaplMeter(tmp_path)]).start()
    set_energy(tmp_path, "intel-rapl:0", 50)
    reading = window.stop()

    assert reading.joules == pytest.approx(150e-6)


def test_rapl_polling_catches_every_wrap(tmp_path: Path) -> None:
    add_zone(tmp_path, "intel-rapl:0", "package-0", 0, max_uj=1_000)
    # Two wraps: 900 -> 400 -> 900 -> 300 is 500 + 500 + 400 µJ; first and last alone say 400.
    energy = iter([900, 400, 900, 300])
    consumed = threading.Event()

    def read_int(path: Path) -> int:
        if path.name != "energy_uj":
            return int(path.read_text())
        value = next(energy, None)
        if value is None:
            consumed.set()
            return 300
        return value

    window = EnergyWindow([RaplMeter(tmp_path, read_int, poll_s=0.001)]).start()
    assert consumed.wait(5.0)
    reading = window.stop()

    assert reading.joules == pytest.approx(1400e-6)


def test_unreadable_rapl_falls_back_to_a_labelled_estimate(powercap: Path) -> None:
    def denied(path: Path) -> int:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return int(path.read_text())

    params = EnergyParams(cpu_watts=80.0)
    window = meter_from_params(params, "cpu", powercap_root=powercap, read_int=denied).start()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn CPU so the estimate has something to count
        pass
    reading = window.stop()

    assert reading.method == "estimate"
    assert reading.joules is not None and reading.joules > 0
    assert "estimate" in reading.reason and "not readable" in reading.reason


def test_unreadable_rapl_without_cpu_watts_is_unavailable(powercap: Path) -> None:
    def denied(path: Path) -> int:
        raise PermissionError(13, "Permission denied")

    reading = (
        meter_from_params(EnergyParams(), "cpu", powercap_root=powercap, read_int=denied)
        .start()
        .stop()
    )
    assert reading.joules is None
    assert "not readable" in reading.reason


def test_no_powercap_and_no_cpu_watts_is_unavailable(tmp_path: Path) -> None:
    window = meter_from_params(EnergyParams(), "cpu", powercap_root=tmp_path / "absent")
    reading = window.start().stop()

    assert reading.joules is None
    assert reading.method == "unavailable"
    assert "no RAPL package domain" in reading.reason


# --- estimate ---------------------------------------------------------------------------------


def test_estimate_charges_the_share_of_cores_used() -> None:
    cpu_seconds = iter([10.0, 14.0])
    estimate = CpuTimeEstimate(100.0, cores=8, cpu_seconds=lambda: next(cpu_seconds))
    reading = EnergyWindow([estimate]).start().stop()

    assert reading.joules == pytest.approx(4.0 / 8 * 100.0)  # 4 CPU-s of 8 cores at 100 W
    assert reading.method == "estimate"
    assert reading.per_device[0]["method"] == "estimate"
    assert "8 logical cores" in reading.reason and "100 W" in reading.reason


# --- the window -------------------------------------------------------------------------------


def test_window_as_context_manager_and_short_window_flag() -> None:
    nvml = three_gpus()
    clock = StepClock()
    with EnergyWindow([NvmlCounterMeter(NvmlGpus(nvml, gpus=[0]))], clock=clock) as window:
        nvml.gpus[0].energy_mj += 1_000
        clock.now = 0.05
    assert window.reading.joules == pytest.approx(1.0)
    assert window.reading.short_window

    window.start()
    clock.now = 1.0
    assert not window.stop().short_window


def test_window_refuses_to_start_twice() -> None:
    window = EnergyWindow([]).start()
    with pytest.raises(RuntimeError, match="already started"):
        window.start()
    reading = window.stop()
    assert reading.joules is None and reading.reason == "no energy meter configured"


def test_measure_for_at_least_repeats_until_the_window_is_long_enough() -> None:
    nvml = three_gpus()
    syncs = []

    def one_call() -> None:
        nvml.gpus[0].energy_mj += 10  # 10 mJ per call
        time.sleep(0.005)

    window = EnergyWindow([NvmlCounterMeter(NvmlGpus(nvml, gpus=[0]))])
    reading, calls = measure_for_at_least(one_call, 0.1, window, sync=lambda: syncs.append(1))

    assert calls > 1
    assert reading.seconds >= 0.1
    assert reading.joules == pytest.approx(calls * 0.010)
    assert reading.joules_per(calls) == pytest.approx(0.010)
    assert len(syncs) == 2  # before the window opens and before it closes


def test_measure_for_at_least_closes_the_window_when_the_call_fails() -> None:
    nvml = three_gpus()
    window = EnergyWindow(gpu_meters(nvml))

    def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        measure_for_at_least(broken, 1.0, window)
    assert nvml.open_sessions == 0
    assert window.reading is not None


def test_measure_for_at_least_spends_no_time_when_no_meter_reads() -> None:
    called = []
    window = EnergyWindow([])
    started = time.perf_counter()
    reading, calls = measure_for_at_least(lambda: called.append(1), 5.0, window)
    assert time.perf_counter() - started < 1.0 and calls == 0 and called == []
    assert reading.joules is None and reading.reason == "no energy meter configured"
    assert reading.joules_per(calls) is None
