"""Pods before reports: how a burst of new jobs shares a busy API server.

At most CREATING_JOBS jobs create their objects at once, first come first served,
so each gang is created in a moment rather than every gang a little at a time
(at 200 jobs x 4 pods on a 2-core API server: all pods in 12-13 s, 17 s with 8).

While other jobs still wait to create their pods, or the pod watch has not yet
shown pods this operator created, a job that is only starting up (creating,
starting or just running its pods) holds its status write and Events back, for
at most REPORT_WAIT_SECONDS; most jobs then write their status once, from what
their pods show by then (at 200 x 4: all pods in 12.6-16.0 s instead of
19.7-21.8 s). A report of a problem, an end or a restart is never held back, and
a job applied alone reports at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator

from kubespeed.spec.status import Phase, Reason
from kubespeed_operator.decide.lifecycle import Decision
from kubespeed_operator.decide.status import diff
from kubespeed_operator.run.expectations import Expectations

Key = tuple[str, str]
CREATING_JOBS = 32
REPORT_WAIT_SECONDS = 30.0
# What a starting job reports while all is well: the reports that may wait.
STARTUP_REASONS = frozenset({Reason.CREATING_PODS, Reason.PODS_STARTING, Reason.PODS_RUNNING})


class PodsFirst:
    def __init__(self, expectations: Expectations) -> None:
        self.expectations = expectations
        expectations.on_change = self._update
        self._slots = asyncio.Semaphore(CREATING_JOBS)
        # Passes waiting for or holding a create slot.
        self._creating = 0
        # Jobs whose startup report is waiting -> monotonic time it first waited.
        self._waiting: dict[Key, float] = {}
        # Set while no pass is creating and no created pod is expected.
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.asynccontextmanager
    async def creating(self) -> AsyncIterator[None]:
        """A create slot, held for the block; a pass waiting for one counts as creating."""
        self._creating += 1
        self._update()
        try:
            async with self._slots:
                yield
        finally:
            self._creating -= 1
            self._update()

    def report_can_wait(self, job: Key, current: dict[str, Any], decision: Decision) -> bool:
        """Whether this startup report may wait while the API server is busy with other jobs' pods;
        a report that goes out ends the job's wait."""
        if self._may_wait(job, current, decision):
            first = self._waiting.setdefault(job, time.monotonic())
            if time.monotonic() - first < REPORT_WAIT_SECONDS:
                return True
        self._waiting.pop(job, None)
        return False

    async def wait_to_report(self, job: Key) -> None:
        """A job whose report is waiting sleeps until every pod is created and seen, or its wait is up."""
        first = self._waiting.get(job)
        if first is None or not self._busy(job):
            return
        # `_quiet` also waits for this job's own pods to be seen, which is a moment at most.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), timeout=max(0.0, first + REPORT_WAIT_SECONDS - time.monotonic()))

    def forget(self, job: Key) -> None:
        self._waiting.pop(job, None)

    def _may_wait(self, job: Key, current: dict[str, Any], decision: Decision) -> bool:
        if not self._busy(job) or decision.delete_pods or decision.delete_job or decision.reason not in STARTUP_REASONS:
            return False
        old = current.get("status") or {}
        return old.get("phase") in (None, Phase.PENDING) and bool(diff(old, decision.status))

    def _busy(self, job: Key) -> bool:
        """Whether jobs other than `job` have pods to create, or created pods the watch has not shown yet."""
        return bool(self._creating) or self.expectations.outstanding() > self.expectations.outstanding(job)

    def _update(self) -> None:
        if self._creating or self.expectations.outstanding():
            self._quiet.clear()
        else:
            self._quiet.set()
