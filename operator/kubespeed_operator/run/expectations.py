"""Pods this operator created that the pod watch has not shown yet: the Job controller's expectations.

The watch can lag a create by seconds while the API server is busy, by minutes
when it is swamped. A pod expected counts as present, so the next pass neither
creates it again (at 200 jobs x 4 pods, 77 creates a burst were answered 409
without this) nor reports the gang short of it. It is expected until the watch
shows it (same name and attempt), or until the watch has passed the version the
pod was created at without showing it (it went again meanwhile), or, where the
versions cannot be compared, for GRACE_SECONDS: then the watch alone decides again.
With a fixed 30 s instead, at 1,000 jobs x 8 pods the watch ran that far behind
and 7,086 creates were repeated (each answered 409, then read to check its owner).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from kubespeed_operator.decide.observed import PodView
from kubespeed_operator.run.kube import version_order

Key = tuple[str, str]
# The Job controller's ExpectationsTimeout.
GRACE_SECONDS = 300.0


def _passed(watch_version: str | None, created_version: str | None) -> bool:
    """Whether the watch has shown every change up to the version a pod was created at."""
    order = version_order(watch_version, created_version)
    return order is not None and order >= 0


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

    def observe(self, job: Key, watched: Iterable[PodView], watch_version: str | None = None) -> None:
        """The job's pods as the watch shows them, at `watch_version`: those it shows, those it has
        passed without showing, and those overdue are expected no longer."""
        pods = self._pods.get(job)
        if not pods:
            return
        shown = {(p.name, p.attempt) for p in watched}
        now = self.clock()
        for name, (pod, at) in list(pods.items()):
            if (pod.name, pod.attempt) in shown or _passed(watch_version, pod.version) or now - at > GRACE_SECONDS:
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
