"""Watching real processes through /proc (Linux): shared by ``tests/app/test_processes.py`` and
``benchmarks/reliability_campaign.py``."""

from __future__ import annotations

import os
import time
from pathlib import Path


def stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def alive(pid: int) -> bool:
    fields = stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has exited


def descendants(pid: int) -> set[int]:
    """Children, grandchildren ... of ``pid``."""
    parents = {int(e.name): int(f[1]) for e in Path("/proc").iterdir()
               if e.name.isdigit() and (f := stat(int(e.name)))}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def pool_workers(pid: int) -> list[int]:
    """The multiprocessing (spawn) workers among ``pid``'s descendants."""
    workers = []
    for child in descendants(pid):
        try:
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                workers.append(child)
        except OSError:
            pass
    return sorted(workers)


def poll(condition, timeout: float, interval: float = 0.1):
    """``condition()``'s first true value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    return None
