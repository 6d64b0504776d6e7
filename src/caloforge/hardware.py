"""What the machine is: the processor's name and vendor (for bench tables and precision choices)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_name", "cpu_vendor", "cpuinfo"]


@functools.cache
def cpuinfo(field: str) -> str:
    """The first value of ``field`` in /proc/cpuinfo (``model name``, ``vendor_id``, …); empty
    where there is no such file or field."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    """The processor model (from /proc/cpuinfo where there is one)."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``; empty where it cannot be read)."""
    return cpuinfo("vendor_id")
