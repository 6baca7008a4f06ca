"""Energy of a window of work, read from the best meter this machine has.

Meters are tried in this order; the first that works measures the window:

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

from pipeline.energy.base import ENERGY_SCOPES, EnergyReading, Meter, MeterUnavailable, Method
from pipeline.energy.cpu import CpuTimeEstimate, RaplMeter, process_cpu_seconds, read_sysfs_int
from pipeline.energy.nvml import NvmlCounterMeter, NvmlGpus, NvmlPowerMeter, visible_gpus
from pipeline.energy.window import (
    EnergyWindow,
    cpu_meters,
    gpu_meters,
    measure_for_at_least,
    meter_from_params,
)

__all__ = [
    "ENERGY_SCOPES",
    "CpuTimeEstimate",
    "EnergyReading",
    "EnergyWindow",
    "Meter",
    "MeterUnavailable",
    "Method",
    "NvmlCounterMeter",
    "NvmlGpus",
    "NvmlPowerMeter",
    "RaplMeter",
    "cpu_meters",
    "gpu_meters",
    "measure_for_at_least",
    "meter_from_params",
    "process_cpu_seconds",
    "read_sysfs_int",
    "visible_gpus",
]
