"""CPU feature detection and the choices that follow it, both branches on any machine."""

from __future__ import annotations

import pytest

from pipeline.hardware.cpu import (
    OVERRIDE_ENV,
    CpuFeatures,
    CpuFlagsError,
    cpuinfo_value,
    detect,
)
from pipeline.hardware.precision import choose_precision, cpu_has_native_bf16

AVX2 = CpuFeatures(frozenset({"avx2", "fma"}), "test")
AVX512 = CpuFeatures(frozenset({"avx2", "fma", "avx512f"}), "test")
VNNI_BF16 = CpuFeatures(frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}), "test")
AVX_VNNI = CpuFeatures(frozenset({"avx2", "fma", "avx_vnni"}), "test")
AMX = CpuFeatures(frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"}), "test")


@pytest.mark.parametrize(
    ("cpu", "profile", "bf16", "vnni"),
    [
        (AVX2, "AVX2", False, False),
        (AVX512, "AVX-512", False, False),
        (VNNI_BF16, "AVX-512 VNNI bf16", True, True),
        (AVX_VNNI, "AVX2 VNNI", False, True),
        (AMX, "AVX-512 VNNI bf16 AMX", True, True),
    ],
)
def test_profiles_and_the_facts_choices_read(cpu, profile, bf16, vnni):
    assert cpu.profile == profile
    assert cpu.native_bf16 is bf16 and cpu.int8_dot_product is vnni


def test_override_names_exactly_the_flags_and_drives_the_bf16_policy(monkeypatch):
    monkeypatch.setenv(OVERRIDE_ENV, "avx2, fma")
    assert detect() == CpuFeatures(frozenset({"avx2", "fma"}), OVERRIDE_ENV)
    assert not cpu_has_native_bf16()
    assert choose_precision("auto", "cpu", None, cpu_has_native_bf16()).name == "fp32"
    monkeypatch.setenv(OVERRIDE_ENV, "avx2,avx512f,avx512_bf16")
    assert cpu_has_native_bf16()
    assert choose_precision("auto", "cpu", None, cpu_has_native_bf16()).name == "bf16"
    monkeypatch.setenv(OVERRIDE_ENV, "")  # set but empty: a CPU with none of the tracked flags
    assert detect().flags == frozenset() and "no AVX2" in detect().profile


def test_an_unknown_override_flag_is_named(monkeypatch):
    monkeypatch.setenv(OVERRIDE_ENV, "avx2,avx1024")
    with pytest.raises(CpuFlagsError, match="unknown flag 'avx1024'"):
        detect()


def test_detection_without_override_reports_its_source(monkeypatch):
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    found = detect()
    assert found.source in ("cpuid", "/proc/cpuinfo", "none")
    assert found.as_dict()["profile"] == found.profile


# Two CPUs in /proc/cpuinfo's own layout: a tab before each colon, a blank line between CPUs.
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni
bogomips\t: 5199.99

processor\t: 1
model name\t: Another CPU
flags\t\t: fpu sse2
"""


def test_the_one_cpuinfo_parser_reads_the_first_cpus_line(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert cpuinfo_value("model name", str(path)) == "AMD EPYC 9B14"
    assert cpuinfo_value("flags", str(path)) == "fpu sse2 avx2 fma avx512f avx512_vnni"
    assert cpuinfo_value("Features", str(path)) is None  # arm64's spelling: absent here
    assert cpuinfo_value("model name", str(tmp_path / "missing")) is None
    path.write_text("model name without a colon\n")
    assert cpuinfo_value("model name", str(path)) is None
