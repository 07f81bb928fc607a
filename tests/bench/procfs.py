"""What ``/proc`` says about a process: CPU seconds, resident memory, children.

Cheap enough to call from inside a measurement (one small read each), and
synchronous on purpose: procfs reads never block on I/O.

    before = cpu_seconds(pid)
    ...  # the measured window
    used = cpu_seconds(pid) - before
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` (all its threads); 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    # The command name (field 2) may contain spaces: split after its closing paren.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_kb(pid: int) -> int:
    """Resident set size of `pid` in KiB; 0 if it is gone."""
    try:
        statm = Path(f"/proc/{pid}/statm").read_bytes()
    except OSError:
        return 0
    return int(statm.split()[1]) * PAGE_KB


def children(pid: int) -> list[int]:
    """Direct children of `pid`, by each process's parent PID (``task/*/children``
    needs a kernel option that is not always there)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def cpu_times() -> dict[str, list[int]]:
    """Per-core jiffies from ``/proc/stat``: ``{"cpu0": [user, nice, system, idle, iowait,
    irq, softirq, steal, ...], ...}``."""
    cores: dict[str, list[int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *values = line.split()
                cores[name] = [int(v) for v in values]
    return cores


def core_usage(before: dict[str, list[int]], after: dict[str, list[int]]
               ) -> dict[str, dict[str, float]]:
    """Per core, the busy and the steal fraction between two `cpu_times` snapshots.

    Busy includes softirq: on loopback the TCP stack's work lands there.
    """
    usage: dict[str, dict[str, float]] = {}
    for name, end in after.items():
        start = before.get(name)
        if start is None:
            continue
        delta = [b - a for a, b in zip(start, end, strict=False)]
        total = sum(delta[:8]) or 1
        idle = delta[3] + delta[4]
        usage[name] = {"busy": round((total - idle) / total, 3),
                       "steal": round(delta[7] / total, 3)}
    return usage


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return state[state.rindex(b")") + 2 : state.rindex(b")") + 3] != b"Z"
