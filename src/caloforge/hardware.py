"""What the machine is: the processor's name and vendor (for bench tables and precision choices),
its CPUs, and how many of them other work keeps busy (for the default thread count)."""

from __future__ import annotations

import functools
import math
import os
import platform
import time
from pathlib import Path

__all__ = ["busy_cpus", "cpu_name", "cpu_vendor", "cpuinfo", "default_threads", "free_cpus", "usable_cpus"]


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


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity set where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """Busy and total jiffies of ``cpus`` from /proc/stat; None where it cannot be read."""
    busy = total = 0
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + idle + iowait + irq + softirq + steal
    return (busy, total) if total else None


def _own_jiffies() -> float:
    """CPU time of this process (every thread), in /proc/stat's clock ticks."""
    t = os.times()
    return (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def busy_cpus(window_s: float = 0.1) -> float | None:
    """How many of this process's CPUs other work keeps busy: the busy share of their time
    over the next ``window_s`` seconds (from /proc/stat, while this thread sleeps), less what
    this process's own threads used meanwhile (torch's idle workers spin for a while), times
    their number; None where /proc/stat cannot be read."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except AttributeError:
        return None
    start, own = _cpu_jiffies(cpus), _own_jiffies()
    time.sleep(window_s)
    end, own = _cpu_jiffies(cpus), _own_jiffies() - own
    if start is None or end is None or end[1] <= start[1]:
        return None
    return max(0.0, len(cpus) * (end[0] - start[0] - own) / (end[1] - start[1]))


def free_cpus(cpus: int, busy: float) -> int:
    """The CPUs of ``cpus`` that ``busy`` CPUs' worth of other work leaves free: a CPU at least
    half busy counts as busy; at least one.

    >>> [free_cpus(2, busy) for busy in (0.0, 0.4, 0.5, 1.0, 1.6, 2.0)]
    [2, 2, 1, 1, 1, 1]
    """
    return max(1, cpus - math.floor(busy + 0.5))


def default_threads(busy: float | None = None) -> tuple[int, str]:
    """The torch CPU threads a command uses when ``--threads`` is not given, and why: the CPUs
    that other work does not keep busy (a CPU at least half busy counts as busy), at least one.
    A parallel region waits for its slowest thread, so a thread sharing a CPU with a busy
    process stalls every one of them: on 2 cores with one busy process, 2 threads generate
    several times slower than 1. ``OMP_NUM_THREADS``, where set, decides instead. ``busy``
    (CPUs busy with other work) is measured by :func:`busy_cpus` when not given.
    """
    cpus = usable_cpus()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    if busy is None:
        busy = busy_cpus()
    if busy is None:
        return cpus, f"all {cpus} CPUs (their load cannot be read here)"
    free = free_cpus(cpus, busy)
    if free == cpus:
        return cpus, f"all {cpus} CPUs (idle)"
    return free, f"{free} of {cpus} CPUs: other work keeps {busy:.1f} busy"
