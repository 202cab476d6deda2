"""The repack decision, for CPUs with and without AMX, under each setting.

The development machines differ (some have AMX, some only AVX2), so both answers are covered
here from recorded CPU flags and llama.cpp system-info strings, whatever this machine is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.engine.cpu import decide_repack, parse_cpu_flags, read_cpu_flags
from bastion.engine.llamacpp.model import llama_system_info, repack_decision

# Abridged /proc/cpuinfo of a Sapphire Rapids Xeon and of an AVX2-only AMD EPYC.
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni amx_bf16 avx512_fp16 amx_tile amx_int8
"""
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma bmi2 sha_ni
"""
GRAVITON = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp sve
"""
INFO_AMX = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
INFO_AVX2 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | REPACK = 1 |"

AMX = parse_cpu_flags(SAPPHIRE_RAPIDS)
NO_AMX = parse_cpu_flags(EPYC_AVX2)


def test_flags_are_read_from_x86_and_arm_cpuinfo() -> None:
    assert {"avx2", "amx_int8", "amx_tile"} <= AMX
    assert "amx_int8" not in NO_AMX
    assert "avx2" in NO_AMX
    assert "asimddp" in parse_cpu_flags(GRAVITON)
    assert parse_cpu_flags("") == frozenset()


def test_unreadable_cpuinfo_gives_no_flags(tmp_path: Path) -> None:
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    path = tmp_path / "cpuinfo"
    path.write_text(SAPPHIRE_RAPIDS)
    assert "amx_int8" in read_cpu_flags(path)


def test_auto_turns_repacking_off_where_the_cpu_has_amx() -> None:
    decision = decide_repack("auto", AMX, INFO_AMX)
    assert not decision.enabled
    assert decision.label == "off"
    assert "amx_int8" in decision.reason
    assert "AMX_INT8" in decision.reason
    assert "20824" in decision.reason


@pytest.mark.parametrize(
    ("flags", "info"),
    [(AMX, INFO_AVX2), (frozenset(), INFO_AMX)],
    ids=["flags-only", "llama-build-only"],
)
def test_either_source_of_amx_evidence_is_enough(flags: frozenset[str], info: str) -> None:
    assert not decide_repack("auto", flags, info).enabled


def test_auto_keeps_repacking_where_there_is_no_amx() -> None:
    decision = decide_repack("auto", NO_AMX, INFO_AVX2)
    assert decision.enabled
    assert not decision.risky
    assert "no AMX" in decision.reason
    assert decide_repack("auto", parse_cpu_flags(GRAVITON), "NEON = 1 | REPACK = 1").enabled


@pytest.mark.parametrize("flags", [AMX, NO_AMX], ids=["amx", "no-amx"])
def test_off_is_always_off(flags: frozenset[str]) -> None:
    decision = decide_repack("off", flags, INFO_AMX if flags is AMX else INFO_AVX2)
    assert not decision.enabled
    assert not decision.risky
    assert decision.reason.startswith("set to off (engine.repack")


def test_on_is_obeyed_but_flagged_as_risky_on_amx() -> None:
    forced = decide_repack("on", AMX, INFO_AMX)
    assert forced.enabled
    assert forced.risky
    assert "crashes" in forced.reason
    plain = decide_repack("on", NO_AMX, INFO_AVX2)
    assert plain.enabled
    assert not plain.risky


def test_this_machine_follows_its_own_flags_and_build() -> None:
    """Whatever this CPU is, the engine's decision matches what the CPU and llama.cpp say."""
    has_amx = "amx_int8" in read_cpu_flags() or "AMX_INT8 = 1" in llama_system_info()
    assert repack_decision("auto").enabled is not has_amx
    assert not repack_decision("off").enabled
    assert repack_decision("on").enabled
