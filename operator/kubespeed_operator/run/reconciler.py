"""One reconcile of one job: read it, decide (`decide.lifecycle.decide`), apply the decision.

The order of writes is what keeps a crash at any point harmless: pods of the
current attempt are created (idempotently) first, then the status is written
(guarded by the job's resourceVersion), then the Events, then the pods of an
ended attempt are deleted. A restart re-reads everything and lands on the same
decision, so no step is remembered in memory.

What is kept in memory is what the API server said, as an informer keeps it:
the job (`jobs.Jobs`) and the pods created but not yet watched
(`expectations.Expectations`). Neither is needed for a correct decision, only
for a cheap one. `pods_first.PodsFirst` orders a burst of new jobs.

A pod is the job's only if its controller is the job's UID: the pod watch finds
pods by the job's name, and a job deleted and created again under that name may
still have pods (and children) of the old one. Those are never counted or
adopted; they only keep the new job waiting (create.py). When a job goes, its
pods are deleted here at once (`job_deleted`), rather than at the pace of the
garbage collector (20 deletes a second by default: a minute for 200 jobs of 4
pods), so their GPUs are free for the next job.

Elastic mode's capacity probes (`build.probes`) are kept as the decision says
(`Decision.probes`), after everything else: every decision but that of a shrunk gang
running asks for none, so whatever path a job takes, its probes go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import aiohttp

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec
from kubespeed_operator.build.children import Cluster
from kubespeed_operator.build.probes import capacity_probe
from kubespeed_operator.decide import elastic
from kubespeed_operator.decide.lifecycle import Decision, Timing, decide, run_policy
from kubespeed_operator.decide.observed import PodView, ProbeView, view
from kubespeed_operator.decide.progress import TrainerReading, rank0_to_read
from kubespeed_operator.decide.recovery import read_interval
from kubespeed_operator.decide.status import Event, diff, timestamp
from kubespeed_operator.run.create import Creator
from kubespeed_operator.run.expectations import Expectations
from kubespeed_operator.run.jobs import Jobs, Key
from kubespeed_operator.run.kube import ApiError, Kube, job_path, path, with_conflict_retry
from kubespeed_operator.run.metrics import OperatorMetrics
from kubespeed_operator.run.pods_first import PodsFirst
from kubespeed_operator.run.scrape import ProgressReader

logger = logging.getLogger("kubespeed.operator")

LEASE_WAIT_SECONDS = 1.0
# A deleted job's pods: tries, and the wait before the second (doubling): about a minute in all.
DELETE_ATTEMPTS = 6
DELETE_RETRY_SECONDS = 2.0
# The finalizer of a job whose deletion waits for its dependents (propagationPolicy Foreground).
FOREGROUND_FINALIZER = "foregroundDeletion"
PodsOf = Callable[[str, str], Iterable[PodView]]
ProbesOf = Callable[[str, str], Iterable[ProbeView]]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Reconciler:
    def __init__(
        self, kube: Kube, jobs: Jobs, metrics: OperatorMetrics, timing: Timing, identity: str, http: aiohttp.ClientSession,
        may_act: Callable[[], bool] = lambda: True, cluster: Cluster = Cluster(),
    ):
        self.kube = kube
        self.jobs = jobs
        self.metrics = metrics
        self.timing = timing
        self.identity = identity
        self.may_act = may_act
        self.cluster = cluster
        self.pods_of: PodsOf = lambda namespace, name: ()
        self.probes_of: ProbesOf = lambda namespace, name: ()
        # The pod watch's resourceVersion for a namespace (`PodWatch.version`).
        self.watch_version: Callable[[str], str | None] = lambda namespace: None
        self.expectations = Expectations()
        self.pods_first = PodsFirst(self.expectations)
        self.creator = Creator(kube)
        self.progress = ProgressReader(http)
        # Deletions of the pods of jobs that went (job_gone), running on their own.
        self._deleting: set[asyncio.Task] = set()

    async def reconcile(self, namespace: str, name: str) -> float | None:
        """Bring one job a step closer to its decision; seconds until the next timed look, None if it is gone."""
        if not self.may_act():
            # The Lease is not fresh (the API server is away): act only once it is renewed.
            return LEASE_WAIT_SECONDS
        key = (namespace, name)
        started = time.monotonic()
        passes = 0

        async def once() -> float | None:
            # The first pass decides from the registry's copy; a pass after a conflict reads the job fresh.
            nonlocal passes
            cached = self.jobs.get(key) if passes == 0 else None
            passes += 1
            return await self._reconcile_once(key, cached or await self.kube.get(job_path(namespace, name)))

        try:
            return await with_conflict_retry(once)
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            self.metrics.health.reconciled()

    def job_seen(self, job: dict[str, Any]) -> bool:
        """The job as its watch showed it; False when that is no news (the echo of this operator's own write)."""
        return self.jobs.seen(job)

    def pod_seen(self, namespace: str, name: str) -> bool:
        """The pod watch showed a change of the job's pods; True when the job is live, to be woken."""
        key = (namespace, name)
        if self.expectations.outstanding(key):
            uid = ((self.jobs.get(key) or {}).get("metadata") or {}).get("uid")
            self.expectations.observe(key, [p for p in self.pods_of(namespace, name) if p.owner == uid], self.watch_version(namespace))
        return key in self.jobs

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        for part in (self.jobs, self.expectations, self.pods_first, self.progress):
            part.forget(key)

    def job_gone(self, job: dict[str, Any]) -> None:
        """The job was deleted (or is being deleted): forget it, and delete its pods now, each with the
        job's grace period and only if it is still the pod this job owns (a UID precondition).

        Only where the deletion asks for the dependents to go and leaves them to the garbage
        collector: a background deletion (the job gone without a deletionTimestamp before) or a
        foreground one in progress. An orphaning deletion keeps them; once a job that had a
        deletionTimestamp is gone, the collector has already done its part.
        """
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        # Pods already being deleted (the collector may have got there first) are deleted again,
        # a request each: what the operator does then never depends on that race.
        pods: list[PodView | ProbeView] = [p for p in self.pods_of(namespace, name) if p.owner == meta.get("uid")]
        pods += [p for p in self.probes_of(namespace, name) if p.owner == meta.get("uid")]
        self.forget(namespace, name)
        dependents_go = not meta.get("deletionTimestamp") or FOREGROUND_FINALIZER in (meta.get("finalizers") or [])
        if not pods or not dependents_go:
            return
        grace = run_policy(job, None).terminationGracePeriodSeconds
        task = asyncio.create_task(self._delete_pods(namespace, pods, grace), name=f"delete pods of {namespace}/{name}")
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    async def close(self) -> None:
        for task in list(self._deleting):
            task.cancel()
        await asyncio.gather(*self._deleting, return_exceptions=True)

    async def _delete_pods(self, namespace: str, pods: list[PodView | ProbeView], grace: int) -> None:
        # The job's DELETED event comes once, so a delete that failed (a busy API server, the
        # Lease not fresh at that moment) is tried again rather than left to the collector,
        # which deletes 20 objects a second: minutes for a thousand jobs.
        backoff = DELETE_RETRY_SECONDS
        for attempt in range(DELETE_ATTEMPTS):
            while not self.may_act():
                await asyncio.sleep(LEASE_WAIT_SECONDS)
            results = await asyncio.gather(
                *(self.kube.delete(path("v1", "Pod", namespace, pod.name), grace_seconds=grace, uid=pod.uid) for pod in pods),
                return_exceptions=True,
            )
            failed = [(pod, result) for pod, result in zip(pods, results) if isinstance(result, Exception)]
            if not failed:
                return
            pods = [pod for pod, _ in failed]
            if attempt + 1 < DELETE_ATTEMPTS:
                await asyncio.sleep(backoff)
                backoff *= 2
        for pod, result in failed:
            logger.warning("%s/%s: could not delete the pod of a deleted job, left to the garbage collector: %s", namespace, pod.name, result)

    async def _reconcile_once(self, key: Key, job: dict[str, Any] | None) -> float | None:
        namespace, name = key
        if job is None:
            self.forget(namespace, name)
            return None
        if job["metadata"].get("deletionTimestamp"):
            self.job_gone(job)
            return None
        uid = job["metadata"].get("uid")
        watched, others = [], []
        for pod in self.pods_of(namespace, name):
            (watched if pod.owner == uid else others).append(pod)
        self.expectations.observe(key, watched, self.watch_version(namespace))
        parsed = self.jobs.spec(job)
        spec = elastic.effective_spec(job, parsed) if parsed is not None else None
        probes = [p for p in self.probes_of(namespace, name) if p.owner == uid]
        pods = await self._confirm_missing(job, spec, watched + self.expectations.unseen(key))
        now = _now()
        progress = await self._read_progress(key, job, spec, pods, now)
        decision = decide(job, pods, now, self.timing, progress=progress, spec=spec, probes=probes)
        if decision.create_attempt is not None and spec is not None:
            async with self.pods_first.creating():
                blocker, created = await self.creator.create(job, spec, decision.create_attempt, decision.create_ranks, others, self.cluster)
            if blocker is not None:
                log = logger.error if blocker.permanent else logger.warning
                log("%s/%s: %s: %s", namespace, name, blocker.reason, blocker.message)
                decision = decide(job, pods, now, self.timing, blocker=blocker, progress=progress, spec=spec, probes=probes)
            elif created:
                # The status written next already counts the pods just created.
                self.expectations.expect(key, created)
                pods = pods + created
                decision = decide(job, pods, now, self.timing, progress=progress, spec=spec, probes=probes)
        if self.pods_first.report_can_wait(key, job, decision):
            # Woken at once, the next pass waits in `reconcile` for the API server to catch up.
            return 0.0
        await self._write_status(job, decision)
        for pod_name in decision.delete_pods:
            await self.kube.delete(path("v1", "Pod", namespace, pod_name), grace_seconds=decision.grace_seconds)
        await self._keep_probes(job, spec, decision.probes, probes)
        if decision.delete_job:
            logger.info("%s/%s: ttlSecondsAfterFinished passed, deleting the job", namespace, name)
            await self.kube.delete(job_path(namespace, name), propagation="Background")
            return None
        return decision.wake_after

    async def _keep_probes(self, job: dict[str, Any], spec: LMTrainingJobSpec | None, wanted: int, probes: list[ProbeView]) -> None:
        """Capacity probes 0 .. wanted-1 created where missing; every other probe of the job deleted."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        for probe in probes:
            if probe.index >= wanted and not probe.deleting:
                await self.kube.delete(path("v1", "Pod", namespace, probe.name), grace_seconds=0, uid=probe.uid)
        if spec is None:
            return
        there = {probe.index for probe in probes}
        for index in range(wanted):
            if index in there:
                continue
            try:
                await self.kube.create(capacity_probe(job, spec, index, self.cluster))
            except ApiError as err:
                # The gang trains on at its size; the next pass tries again.
                logger.warning("%s/%s: could not create capacity probe %d: %s", namespace, name, index, err)

    async def _confirm_missing(self, job: dict[str, Any], spec: LMTrainingJobSpec | None, pods: list[PodView]) -> list[PodView]:
        """The pods, with any rank that looks missing from a started gang confirmed by a read.

        The watch can lag a create by a moment; a missing pod ends the attempt, so
        it must really be gone. A refused spec fails the job whatever its pods show.
        """
        attempt = max([(job.get("status") or {}).get("attempt") or 0, *(p.attempt for p in pods)])
        current = [p for p in pods if p.attempt == attempt]
        if spec is None or not any(p.started for p in current):
            return pods
        present = {p.rank for p in current}
        meta = job["metadata"]
        for rank in range(spec.nodes):
            if rank in present:
                continue
            body = await self.kube.get(path("v1", "Pod", meta["namespace"], wiring.pod_name(meta["name"], rank)))
            seen = view(body) if body else None
            if seen is not None and seen.owner == meta.get("uid"):
                pods.append(seen)
        return pods

    async def _read_progress(
        self, key: Key, job: dict[str, Any], spec: LMTrainingJobSpec | None, pods: list[PodView], now: datetime
    ) -> TrainerReading | None:
        interval = read_interval(self.timing.progress_interval, run_policy(job, spec))
        rank0 = rank0_to_read(job.get("status") or {}, pods, now, interval)
        if rank0 is None or rank0.ip is None:
            return None
        return await self.progress.read(key, rank0.ip, interval)

    async def _write_status(self, job: dict[str, Any], decision: Decision) -> None:
        meta = job["metadata"]
        old = job.get("status") or {}
        patch = diff(old, decision.status)
        if not patch:
            return
        self.jobs.written(await self.kube.patch_status(job, patch))
        if old.get("phase") != decision.status.get("phase"):
            logger.info(
                "%s/%s: %s -> %s (%s): %s",
                meta["namespace"], meta["name"], old.get("phase") or "new", decision.status.get("phase"),
                decision.reason, decision.status.get("message"),
            )
        if (decision.status.get("restarts") or 0) > (old.get("restarts") or 0):
            self.metrics.restarts.inc()
        in_place = (decision.status.get("inPlaceRestarts") or 0) - (old.get("inPlaceRestarts") or 0)
        if in_place > 0:
            self.metrics.in_place_restarts.inc(in_place)
        for event in decision.events:
            await self._post_event(job, event)

    async def _post_event(self, job: dict[str, Any], event: Event) -> None:
        meta = job["metadata"]
        now = timestamp(_now())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": job["apiVersion"],
                "kind": job["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": "kubespeed-operator"},
            "reportingComponent": "kubespeed.io/operator",
            "reportingInstance": self.identity,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(body)
        except ApiError as err:
            # An Event is a courtesy to people; the status already says the same.
            logger.warning("%s/%s: could not post Event %s: %s", meta["namespace"], meta["name"], event.reason, err)
