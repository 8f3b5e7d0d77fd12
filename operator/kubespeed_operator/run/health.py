"""Whether the operator is doing its work, for /healthz: a liveness probe that fails restarts it.

Answering HTTP only proves the event loop runs. The leader is healthy while its
pod watch shows signs of life (a line, a bookmark, a listing: the API server sends
a bookmark about every minute and ends each watch after podwatch.WATCH_SECONDS)
and, while jobs are live, jobs get reconciled (each at least every `--resync`
seconds). Either silent for `stall_seconds` means a watch or the work loop is
stuck, which a restart cures. kopf's job watch needs no such check: kopf ends
and restarts it every settings.watching.server_timeout, and aborts a silent one
after client_timeout. A standby, waiting for the Lease, has nothing to be stuck.
"""

from __future__ import annotations

import time
from typing import Callable

DEFAULT_STALL_SECONDS = 600.0


class Health:
    def __init__(self, stall_seconds: float = DEFAULT_STALL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.leading = False
        self.live_jobs: Callable[[], int] = lambda: 0
        self._watch_alive = self._reconciled = clock()

    def lead(self) -> None:
        """This replica took the Lease: its watch and work loop start now."""
        self.leading = True
        self._watch_alive = self._reconciled = self.clock()

    def watch_alive(self) -> None:
        self._watch_alive = self.clock()

    def reconciled(self) -> None:
        self._reconciled = self.clock()

    def problems(self) -> list[str]:
        """Why the operator is unhealthy; empty when it is healthy."""
        if not self.leading:
            return []
        now = self.clock()
        found = []
        silent = now - self._watch_alive
        if silent > self.stall_seconds:
            found.append(f"the pod watch has shown nothing for {silent:.0f}s (a live one shows a bookmark about every minute)")
        idle, jobs = now - self._reconciled, self.live_jobs()
        if jobs and idle > self.stall_seconds:
            found.append(f"no job was reconciled for {idle:.0f}s while {jobs} jobs are live")
        return found
