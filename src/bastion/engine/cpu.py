"""CPU-dependent engine decisions, as pure functions of what the CPU and llama.cpp report.

llama.cpp can repack quantised weights at load into layouts for its faster CPU kernels (its
"extra buffer types": AVX2/AVX-512 repacks for Q4_0 and Q4_K, and AMX tiles on Intel CPUs since
Sapphire Rapids). The AMX path is broken in the llama.cpp that llama-cpp-python builds with
``-march=native``: the first matrix multiply faults on ``ldtilecfg`` (llama.cpp issue 20824) and
takes the whole process with it. ``decide_repack`` keeps repacking where it is known good and
turns it off where AMX is present; llama-server's name for the same switch is ``--no-repack``.

    >>> decide_repack("auto", frozenset({"avx2"}), "AVX2 = 1 | REPACK = 1").enabled
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RepackSetting = Literal["auto", "on", "off"]

AMX_FLAG = "amx_int8"
"""The /proc/cpuinfo flag of the AMX integer tiles that llama.cpp's AMX kernels use."""
_LLAMA_AMX = re.compile(r"\bAMX_INT8\s*=\s*1\b")
_CPUINFO = Path("/proc/cpuinfo")
UPSTREAM_BUG = "llama.cpp issue 20824"
_WHERE_SET = "engine.repack, or the model's catalog entry"


@dataclass(frozen=True)
class RepackDecision:
    """Whether llama.cpp may use its extra (repacking) buffer types, and why."""

    enabled: bool
    reason: str
    risky: bool = False
    """Repacking was forced on where it is known to crash; worth a warning."""

    @property
    def label(self) -> str:
        return "on" if self.enabled else "off"


def amx_evidence(cpu_flags: frozenset[str], system_info: str) -> list[str]:
    """Where AMX shows: the CPU's own flags, and llama.cpp's build (``AMX_INT8 = 1``)."""
    found = []
    if AMX_FLAG in cpu_flags:
        found.append(f"the CPU flags list {AMX_FLAG}")
    if _LLAMA_AMX.search(system_info):
        found.append("llama.cpp was built with AMX_INT8")
    return found


def decide_repack(
    setting: RepackSetting, cpu_flags: frozenset[str], system_info: str
) -> RepackDecision:
    """The extra-buffer policy for one model load.

    ``cpu_flags`` are the CPU's feature flags (``read_cpu_flags``); ``system_info`` is what
    ``llama_print_system_info()`` printed. Either showing AMX is enough to turn ``auto`` off:
    the flags catch a CPU whose llama.cpp build hides it, the build string a CPU whose flags
    could not be read (a container without /proc, a hypervisor masking them).
    """
    amx = amx_evidence(cpu_flags, system_info)
    if setting == "off":
        return RepackDecision(False, f"set to off ({_WHERE_SET})")
    if setting == "on":
        if amx:
            return RepackDecision(
                True,
                f"set to on ({_WHERE_SET}) although {' and '.join(amx)}: llama.cpp's AMX "
                f"repacking crashes at the first matrix multiply on such CPUs ({UPSTREAM_BUG})",
                risky=True,
            )
        return RepackDecision(True, f"set to on ({_WHERE_SET})")
    if amx:
        return RepackDecision(
            False,
            f"auto: {' and '.join(amx)}, and llama.cpp's AMX repacking crashes at the first "
            f"matrix multiply ({UPSTREAM_BUG}); engine.repack: on overrides this",
        )
    return RepackDecision(
        True, "auto: no AMX on this CPU, so the repacked kernels (Q4_0, Q4_K) are safe"
    )


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """Feature flags from /proc/cpuinfo text (``flags`` on x86, ``Features`` on ARM)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def read_cpu_flags(path: Path = _CPUINFO) -> frozenset[str]:
    """This machine's CPU flags; empty where the kernel does not publish them (macOS)."""
    try:
        return parse_cpu_flags(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()
