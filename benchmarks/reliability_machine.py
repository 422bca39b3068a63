"""How busy the machine is, from /proc: a latency benchmark on a shared box must say whether
something else was using the CPU while it ran (and wait for a quiet moment when it can)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of all cores since boot; (0, 0) without /proc."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    except OSError:
        return 0, 0
    values = [int(value) for value in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _process_ticks(pid: int) -> int:
    """utime + stime of one process, 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid in ``postmaster.pid``, None when the server is not running."""
    try:
        return int((data_dir / "postmaster.pid").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def server_ticks(data_dir: Path) -> int:
    """CPU ticks of the postmaster and its live children (backends, background workers)."""
    pid = postmaster_pid(data_dir)
    if pid is None:
        return 0
    return _process_ticks(pid) + sum(_process_ticks(child) for child in _children(pid))


@dataclass
class CpuSnapshot:
    at: float
    machine_busy: int
    machine_total: int
    server: int

    @classmethod
    def take(cls, data_dir: Path) -> CpuSnapshot:
        busy, total = _machine_ticks()
        return cls(time.monotonic(), busy, total, server_ticks(data_dir))


def cpu_use(start: CpuSnapshot, end: CpuSnapshot, app_cpu_s: float) -> dict[str, float]:
    """Cores used on average between two snapshots: the whole machine, PostgreSQL, the app,
    and everything else (other processes on a shared machine)."""
    wall = max(1e-9, end.at - start.at)
    machine = (end.machine_busy - start.machine_busy) / _TICKS_PER_S / wall
    # A server stopped by a fault restarts with fresh counters: count what can be counted.
    server = max(0, end.server - start.server) / _TICKS_PER_S / wall
    app = app_cpu_s / wall
    return {
        "machine_cores_busy": round(machine, 2),
        "postgres_cores": round(server, 2),
        "app_cores": round(app, 2),
        "other_cores": round(max(0.0, machine - server - app), 2),
    }


def busy_cores(seconds: float = 2.0) -> float:
    """Cores busy on average over the next ``seconds``."""
    busy, _ = _machine_ticks()
    time.sleep(seconds)
    later, _ = _machine_ticks()
    return (later - busy) / _TICKS_PER_S / seconds


def wait_until_quiet(*, max_busy_cores: float, timeout_s: float) -> float:
    """Wait (at most ``timeout_s``) until under ``max_busy_cores`` are busy; the last reading."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = busy_cores()
        if busy <= max_busy_cores or time.monotonic() > deadline:
            return busy
