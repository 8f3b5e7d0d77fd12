"""Where a rank's seconds go before its first step, for rank 0's `startup` metrics line.

The phases are `kubespeed.metrics.STARTUP_PHASES`; each ends where the next
begins, so they add up to the time from the rank's process start (the kernel's
record of it, before Python itself loaded) to the end of its first step. The
first step includes compiling the model, when it is compiled.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from kubespeed.metrics import STARTUP_PHASES

# /proc/<pid>/stat's field 22, the start time in clock ticks since boot, counted from the field after the command's ")".
_START_TICKS_FIELD = 19


def process_start() -> float:
    """This process's start in Unix seconds, from the kernel's record of it to the clock tick.

    Not psutil's create_time: it adds those ticks to the boot time in /proc/stat,
    which is whole seconds, so its starts are up to a second early (0.7 s on the
    machine that measured it), and a split into the wait for a rank's process and
    its start-up moved that much from one to the other.
    """
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[_START_TICKS_FIELD])
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))


class StartupClock:
    def __init__(self) -> None:
        self.process_start = process_start()
        self.seconds: dict[str, float] = {}
        self._last = self.process_start

    def mark(self, phase: str) -> None:
        """End `phase` now; the next phase starts here."""
        if phase not in STARTUP_PHASES:
            raise ValueError(f"unknown start-up phase {phase!r}; known: {', '.join(STARTUP_PHASES)}")
        now = time.time()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now

    def record(self) -> dict[str, float | dict[str, float]]:
        """The `startup` line's values: the process start (Unix seconds) and each phase's seconds."""
        return {"processStart": round(self.process_start, 3), "seconds": dict(self.seconds)}
