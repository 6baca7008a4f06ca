"""CPU instruction-set features, detected once, overridable for tests and diagnosis.

Two choices depend on them: bf16 autocast on the CPU (fast only with bf16 units) and the int8
recipe (u8*s8 products summed in int16 saturate on AVX2 and AVX-512 without VNNI). Both read
:func:`detect`, so ``PIPELINE_CPU_FLAGS=avx2,fma`` makes any machine take the AVX2-only branch.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache

from pipeline.core.errors import PipelineError

OVERRIDE_ENV = "PIPELINE_CPU_FLAGS"
# The flags that change a choice or explain a figure, in /proc/cpuinfo's spelling.
TRACKED = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
    "amx_int8",
)  # fmt: skip
# torch.cpu.get_capabilities() spells a few of them differently.
_TORCH_NAMES = {"fma": "fma3", "avx512f": "avx512_f"}
_BF16_UNITS = {"avx512_bf16", "amx_bf16"}
# Dot-product instructions that sum u8*s8 products in 32 bits, so nothing saturates.
_INT8_DOT = {"avx512_vnni", "avx_vnni", "amx_int8"}


class CpuFlagsError(PipelineError):
    pass


@dataclass(frozen=True)
class CpuFeatures:
    flags: frozenset[str]
    source: str  # cpuid | /proc/cpuinfo | PIPELINE_CPU_FLAGS | none

    @property
    def native_bf16(self) -> bool:
        return bool(self.flags & _BF16_UNITS)

    @property
    def int8_dot_product(self) -> bool:
        return bool(self.flags & _INT8_DOT)

    @property
    def profile(self) -> str:
        """A short name for figures: 'AVX2', 'AVX-512 VNNI bf16', ..."""
        if "avx512f" in self.flags:
            base = "AVX-512"
        elif "avx2" in self.flags:
            base = "AVX2"
        else:
            return f"{platform.machine() or 'unknown'} (no AVX2)"
        extras = [name for name, on in (("VNNI", self.int8_dot_product), ("bf16", self.native_bf16))
                  if on]  # fmt: skip
        amx = " AMX" if "amx_tile" in self.flags else ""
        return " ".join([base, *extras]) + amx

    def as_dict(self) -> dict:
        return {"profile": self.profile, "flags": sorted(self.flags), "source": self.source}


def parse_override(text: str) -> frozenset[str]:
    names = frozenset(name for name in text.replace(",", " ").split() if name)
    unknown = sorted(names - set(TRACKED))
    if unknown:
        raise CpuFlagsError(
            f"{OVERRIDE_ENV}: unknown flag {unknown[0]!r} (known: {', '.join(TRACKED)})"
        )
    return names


def _from_torch() -> frozenset[str] | None:
    """cpuid through torch (what the kernels themselves dispatch on); None when too old."""
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return None
    found = capabilities()
    return frozenset(name for name in TRACKED if found.get(_TORCH_NAMES.get(name, name)))


def cpuinfo_value(key: str, path: str = "/proc/cpuinfo") -> str | None:
    """The first CPU's ``key`` line in /proc/cpuinfo, or None (no such file or key: not Linux,
    or an architecture that spells it otherwise)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                name, colon, value = line.partition(":")
                if colon and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model_name() -> str:
    """'AMD EPYC 9B14', say; the platform's own words where /proc/cpuinfo has none."""
    return cpuinfo_value("model name") or platform.processor() or platform.machine() or "unknown"


def _from_proc_cpuinfo() -> frozenset[str]:
    return frozenset((cpuinfo_value("flags") or "").split()) & set(TRACKED)


@cache
def _detect(override: str | None) -> CpuFeatures:
    if override is not None:
        return CpuFeatures(parse_override(override), OVERRIDE_ENV)
    flags = _from_torch()
    if flags is not None:
        return CpuFeatures(flags, "cpuid")
    flags = _from_proc_cpuinfo()
    return CpuFeatures(flags, "/proc/cpuinfo" if flags else "none")


def detect() -> CpuFeatures:
    """This CPU's tracked features, or exactly the ones ``PIPELINE_CPU_FLAGS`` names."""
    return _detect(os.environ.get(OVERRIDE_ENV))
