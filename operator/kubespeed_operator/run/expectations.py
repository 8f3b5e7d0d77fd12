"""Pods this operator created that the pod watch has not shown yet: the Job controller's expectations.

The watch can lag a create by seconds while the API server is busy. A pod
expected counts as present, so the next pass neither creates it again (at 200
jobs x 4 pods, 77 creates a burst were answered 409 without this) nor reports
the gang short of it. It is expected until the watch shows it (same name and
attempt), or for GRACE_SECONDS at most: then the watch alone decides again.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from kubespeed_operator.decide.observed import PodView

Key = tuple[str, str]
GRACE_SECONDS = 30.0


class Expectations:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # Called whenever the number outstanding changes (run.pods_first waits on it).
        self.on_change: Callable[[], None] = lambda: None
        # (job) -> pod name -> (the pod as created, clock time of the create).
        self._pods: dict[Key, dict[str, tuple[PodView, float]]] = {}
        self._outstanding = 0

    def expect(self, job: Key, created: Iterable[PodView]) -> None:
        """Pods just created for `job`."""
        pods = self._pods.setdefault(job, {})
        for pod in created:
            self._outstanding += pod.name not in pods
            pods[pod.name] = (pod, self.clock())
        self._changed(job)

    def observe(self, job: Key, watched: Iterable[PodView]) -> None:
        """The job's pods as the watch shows them: those it shows, and those overdue, are expected no longer."""
        pods = self._pods.get(job)
        if not pods:
            return
        shown = {(p.name, p.attempt) for p in watched}
        now = self.clock()
        for name, (pod, at) in list(pods.items()):
            if (pod.name, pod.attempt) in shown or now - at > GRACE_SECONDS:
                del pods[name]
                self._outstanding -= 1
        self._changed(job)

    def unseen(self, job: Key) -> list[PodView]:
        """The job's pods created and not yet shown by the watch, as they were created."""
        return [pod for pod, _ in (self._pods.get(job) or {}).values()]

    def outstanding(self, job: Key | None = None) -> int:
        """How many pods are expected: of one job, or of every job."""
        if job is None:
            return self._outstanding
        return len(self._pods.get(job) or ())

    def forget(self, job: Key) -> None:
        self._outstanding -= len(self._pods.pop(job, None) or ())
        self.on_change()

    def _changed(self, job: Key) -> None:
        if not self._pods.get(job):
            self._pods.pop(job, None)
        self.on_change()
