"""CPU time of process trees, read from ``/proc`` (Linux).

``cpu_times(roots)`` reads utime and stime (``/proc/PID/stat``, which sum
every thread of a process) of each root and of all its descendants;
``spent(before, after)`` is what the processes used in between.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """Seconds of CPU in user and in kernel (system) mode."""

    user_s: float = 0.0
    system_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.user_s + self.system_s

    @property
    def system_share(self) -> float:
        """The kernel's part of the total (0 when nothing was spent)."""
        return self.system_s / self.total_s if self.total_s else 0.0

    def __add__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user_s + other.user_s, self.system_s + other.system_s)

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user_s - other.user_s, self.system_s - other.system_s)


@dataclass(frozen=True)
class ProcStat:
    """The fields of one ``/proc/PID/stat`` line that this module uses."""

    ppid: int
    times: CpuTimes


def parse_stat(line: str) -> ProcStat:
    """Parse a ``/proc/PID/stat`` line. The command name (2nd field) may hold spaces and parentheses,
    so fields are counted after its last ``)``. Raises ``ValueError`` for a malformed line."""
    _, closing, rest = line.rpartition(")")
    fields = rest.split()
    if not closing or len(fields) < 13:
        raise ValueError(f"not a /proc/PID/stat line: {line!r}")
    # After the name: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
    utime, stime = int(fields[11]), int(fields[12])
    return ProcStat(int(fields[1]), CpuTimes(utime / TICKS_PER_SECOND, stime / TICKS_PER_SECOND))


def _all_stats(proc: Path) -> dict[int, ProcStat]:
    stats = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = parse_stat((entry / "stat").read_text())
            except (OSError, ValueError):
                continue  # it exited while we looked
    return stats


def cpu_times(roots: Iterable[int], proc: Path = PROC) -> dict[int, CpuTimes]:
    """CPU times by pid of every live process in the trees rooted at ``roots`` (roots that exited are left out)."""
    stats = _all_stats(proc)
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    found: dict[int, CpuTimes] = {}
    pending = [pid for pid in roots if pid in stats]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found[pid] = stats[pid].times
            pending.extend(children.get(pid, []))
    return found


def spent(before: dict[int, CpuTimes], after: dict[int, CpuTimes]) -> CpuTimes:
    """What the processes of ``after`` used since ``before`` (a process new since then counts from zero).
    A process that exited in between is not counted: its last times are gone with it."""
    total = CpuTimes()
    for pid, times in after.items():
        total += times - before.get(pid, CpuTimes())
    return total


def machine_busy_s(proc: Path = PROC) -> float:
    """CPU seconds the whole machine has spent busy since boot, over all cores (``/proc/stat``):
    every state but idle and iowait, guest time being counted inside user time already."""
    fields = [int(v) for v in (proc / "stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS_PER_SECOND
