"""Where a rank's seconds go before its first step, for rank 0's `startup` metrics line.

The phases are `kubespeed.metrics.STARTUP_PHASES`; each ends where the next
begins, so they add up to the time from the rank's process start (the kernel's
record of it, before Python itself loaded) to the end of its first step. The
first step includes compiling the model, when it is compiled.
"""

from __future__ import annotations

import time

import psutil

from kubespeed.metrics import STARTUP_PHASES


class StartupClock:
    def __init__(self) -> None:
        self.process_start = psutil.Process().create_time()
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
