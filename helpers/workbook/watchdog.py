"""A kernel that stops working ends a headless run instead of hanging it.

A notebook cell computes: its kernel's CPU time grows. A kernel whose CPU time has barely moved (under 1% of a core) for ``stall_s``
seconds while papermill still waits on a cell has hung (seen under ipykernel 7: the kernel sat idle while the
cell stayed "running", and papermill waits forever without a timeout; a per-cell timeout would instead kill
legitimately long training cells). :class:`KernelWatchdog` watches the CPU time of this process's child
processes (papermill's kernel) and, after ``stall_s`` seconds without progress, kills them: papermill then
raises, and the runner reports the stall and retries the notebook once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

__all__ = ["KernelWatchdog", "stall_seconds"]


def stall_seconds() -> float:
    """Seconds without kernel CPU progress that count as a hang: ``WORKBOOK_STALL_MINUTES`` (default 20) x 60."""
    raw = os.environ.get("WORKBOOK_STALL_MINUTES", "20")
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if minutes <= 0:
        raise ValueError(f"WORKBOOK_STALL_MINUTES={raw!r}: give a positive number of minutes (default 20).")
    return minutes * 60


def _children(parent: int) -> list[int]:
    """Process ids whose parent is ``parent`` (from ``/proc``; empty where there is none)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:  # fields after the command name: state, ppid, ...
            pids.append(int(stat.parent.name))
    return pids


def _cpu_ticks(pid: int) -> int:
    """User + system CPU time of ``pid`` in clock ticks (0 once it has exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


class KernelWatchdog:
    """Context manager: kills this process's children once their summed CPU time has stood still ``stall_s``
    seconds (polled every ``poll_s``, default ``min(10, stall_s / 4)``); ``stalled`` tells afterwards whether it did."""

    def __init__(self, stall_s: float, poll_s: float | None = None):
        self.stall_s, self.poll_s = stall_s, poll_s or min(10.0, stall_s / 4)
        self.stalled = False
        self._stop = threading.Event()

    def _watch(self) -> None:
        """Tumbling windows of ``stall_s``: a window in which the children used under 1% of one core is a hang
        (a computing cell uses ~100-200%; an idle kernel's housekeeping threads almost nothing)."""
        floor = 0.01 * self.stall_s * os.sysconf("SC_CLK_TCK")
        window = None  # (children, ticks at the window's start, its start time)
        while not self._stop.wait(self.poll_s):
            pids = sorted(_children(os.getpid()))
            ticks, now = sum(_cpu_ticks(p) for p in pids), time.monotonic()
            if not pids or window is None or window[0] != pids:
                window = (pids, ticks, now)
            elif now - window[2] >= self.stall_s:
                if ticks - window[1] >= floor:
                    window = (pids, ticks, now)
                    continue
                self.stalled = True
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                return

    def __enter__(self) -> "KernelWatchdog":
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
