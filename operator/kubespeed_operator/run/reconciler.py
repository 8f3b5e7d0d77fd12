"""One reconcile of one job: read it, decide (lifecycle.decide), apply the decision.

The order of writes is what keeps a crash at any point harmless: pods of the
current attempt are created (idempotently) first, then the status is written
(guarded by the job's resourceVersion), then the Events, then the pods of an
ended attempt are deleted. A restart re-reads everything and lands on the same
decision, so no step is remembered in memory.

What is kept in memory is only a cache of what the API server said, as an
informer keeps one: the job as its watch (or this operator's last status write)
showed it, and the pods this operator created that the pod watch has not shown
yet. A stale job costs one conflict on the guarded status write and a fresh
read; a created pod not yet watched is not created again. Neither is needed for
a correct decision, only for a cheap one (one reconcile pass, no GET, no 409).

Pods come before reports: while other jobs still wait to create their pods,
or the pod watch has not yet shown pods this operator created (the API server
is behind), a job that is only starting up (creating, starting or just running
its pods) holds its status write and Events back, for at most
REPORT_WAIT_SECONDS. Hundreds of jobs applied at once then get their pods
sooner, and most write their status once, from what their pods show by then.
A report of a problem, an end or a restart is never held back, and a job
applied alone reports at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import aiohttp

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec, SpecError, parse_job_spec
from kubespeed_operator.build.children import attempt_pods, job_children
from kubespeed_operator.decide import progress as progress_mod
from kubespeed_operator.decide.lifecycle import Blocker, Decision, Timing, decide
from kubespeed_operator.decide.observed import PodPhase, PodView, view
from kubespeed_operator.decide.status import Event, diff, timestamp
from kubespeed_operator.run import scrape
from kubespeed_operator.run.kube import ApiError, Kube, job_path, path, with_conflict_retry
from kubespeed_operator.run.metrics import OperatorMetrics

logger = logging.getLogger("kubespeed.operator")

LEASE_WAIT_SECONDS = 1.0
# How long a pod this operator created counts as present while the watch has not shown it.
CREATED_POD_GRACE_SECONDS = 30.0
# Jobs creating their objects at once. Hundreds of jobs applied together are served
# first come, first served, each gang created in a moment, rather than all of them
# creating a little at a time and every gang finishing last. 32 keeps a 2-core API
# server busy; 8 left it waiting (bench/operator_scale.py: 17 s instead of 12-13 s).
CREATING_JOBS = 32
# How long a claim seen to exist is trusted before it is read again (many jobs share one).
CLAIM_SEEN_SECONDS = 30.0
# The longest a starting job's status waits for other jobs' pods to be created and seen.
REPORT_WAIT_SECONDS = 30.0
# What a starting job reports while all is well: the reports that may wait.
STARTUP_REASONS = frozenset({"CreatingPods", "PodsStarting", "PodsRunning"})
PodsOf = Callable[[str, str], Iterable[PodView]]
Key = tuple[str, str]


def _key(obj: dict[str, Any]) -> Key:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def _newer(cached: dict[str, Any] | None, seen: dict[str, Any]) -> dict[str, Any]:
    """The newer of two copies of one job. A watch can deliver an event older than the
    status this operator just wrote; resourceVersions are etcd revisions (digits) on
    the API servers we know, and a copy that cannot be compared counts as newer."""
    if cached is None:
        return seen
    old, new = cached["metadata"].get("resourceVersion", ""), seen["metadata"].get("resourceVersion", "")
    if old.isdigit() and new.isdigit() and int(old) > int(new) and cached["metadata"].get("uid") == seen["metadata"].get("uid"):
        return cached
    return seen


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _blocker_for(err: ApiError, what: str) -> Blocker:
    """What a refused create means for the job: wait and retry, or fail (the API says the object is invalid)."""
    if err.status == 422:
        return Blocker("InvalidSpec", f"the API server refused {what}: {err.message}; fix the spec", permanent=True)
    if err.status == 403 and "exceeded quota" in err.message:
        return Blocker("QuotaExceeded", f"{what}: {err.message}; raise the namespace's ResourceQuota or wait")
    if err.status == 403 and "service account" in err.message:
        return Blocker("ServiceAccountNotFound", f"{what}: {err.message}; create it or fix spec.serviceAccountName")
    if err.status == 404:
        return Blocker("APINotInstalled", f"{what}: the API it needs is not installed ({err.message})")
    return Blocker(err.reason or "CreateFailed", f"{what}: {err.message}")


class Reconciler:
    def __init__(
        self, kube: Kube, metrics: OperatorMetrics, timing: Timing, identity: str, http: aiohttp.ClientSession,
        may_act: Callable[[], bool] = lambda: True,
    ):
        self.kube = kube
        self.may_act = may_act
        self.metrics = metrics
        self.timing = timing
        self.identity = identity
        self.http = http
        self.pods_of: PodsOf = lambda namespace, name: ()
        # Monotonic time of the next metrics read per job: a rate limit, not state.
        self._next_progress_read: dict[Key, float] = {}
        self._jobs: dict[Key, dict[str, Any]] = {}
        # The resourceVersion of this operator's last status write per job: its echo on the watch is no news.
        self._written: dict[Key, str] = {}
        self._creating = asyncio.Semaphore(CREATING_JOBS)
        # Passes waiting for or holding a create slot; pods in `_created`; set while both are 0.
        self._to_create = 0
        self._unseen = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        # Jobs whose startup report is waiting: (job) -> monotonic time it first waited.
        self._report_waits: dict[Key, float] = {}
        # Claims seen to exist: (namespace, claim) -> monotonic time until which that is trusted.
        self._claims_seen: dict[Key, float] = {}
        # The parsed spec per job, with the (uid, generation) it was parsed from.
        self._specs: dict[Key, tuple[tuple[Any, Any], LMTrainingJobSpec]] = {}
        # (job) -> pod name -> (the pod as created, monotonic time of the create).
        self._created: dict[Key, dict[str, tuple[PodView, float]]] = {}

    async def reconcile(self, namespace: str, name: str) -> float | None:
        """Bring one job a step closer to its decision; seconds until the next timed look, None if it is gone."""
        if not self.may_act():
            # The Lease is not fresh (the API server is away): act only once it is renewed.
            return LEASE_WAIT_SECONDS
        await self._wait_while_busy((namespace, name))
        started = time.monotonic()
        passes = 0

        async def once() -> float | None:
            # The first pass decides from the cached job; a pass after a conflict reads it fresh.
            nonlocal passes
            cached = self._jobs.get((namespace, name)) if passes == 0 else None
            passes += 1
            return await self._reconcile_once(namespace, name, cached or await self.kube.get(job_path(namespace, name)))

        try:
            return await with_conflict_retry(once)
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)

    def job_seen(self, job: dict[str, Any]) -> bool:
        """The job as its watch showed it: what the next reconcile starts from.

        False when it is only the echo of this operator's own last status write,
        which the reconcile that wrote it has already acted on.
        """
        key = _key(job)
        self._jobs[key] = _newer(self._jobs.get(key), job)
        return job["metadata"].get("resourceVersion") != self._written.get(key)

    def forget(self, namespace: str, name: str) -> None:
        self._unseen -= len(self._created.get((namespace, name)) or ())
        for cache in (self._next_progress_read, self._jobs, self._created, self._written, self._specs, self._report_waits):
            cache.pop((namespace, name), None)
        self._update_quiet()

    def pod_seen(self, namespace: str, name: str) -> None:
        """The pod watch showed a pod of the job: pods it created that the watch now shows are no longer awaited."""
        if (namespace, name) in self._created:
            self._prune_created((namespace, name), list(self.pods_of(namespace, name)))

    def _update_quiet(self) -> None:
        if self._to_create or self._unseen:
            self._quiet.clear()
        else:
            self._quiet.set()

    def _busy(self, key: Key) -> bool:
        """Whether jobs other than `key` have pods to create, or created pods the watch has not shown yet."""
        return bool(self._to_create) or self._unseen > len(self._created.get(key) or ())

    def _spec(self, job: dict[str, Any]) -> LMTrainingJobSpec | None:
        """The job's spec, parsed once per generation (the API server bumps it on every change
        of the spec); None when it does not parse, for `decide` to say why."""
        version = (job["metadata"].get("uid"), job["metadata"].get("generation"))
        cached = self._specs.get(_key(job))
        if cached is not None and cached[0] == version and None not in version:
            return cached[1]
        try:
            spec = parse_job_spec(job.get("spec") or {})
        except SpecError:
            return None
        self._specs[_key(job)] = (version, spec)
        return spec

    def _with_created(self, key: Key, watched: list[PodView]) -> list[PodView]:
        """The watched pods, plus those this operator created that the watch has not shown yet."""
        if key not in self._created:
            return watched
        self._prune_created(key, watched)
        return watched + [pod for pod, _ in self._created.get(key, {}).values()]

    def _remember_created(self, key: Key, pods: list[PodView]) -> None:
        created = self._created.setdefault(key, {})
        for pod in pods:
            self._unseen += pod.name not in created
            created[pod.name] = (pod, time.monotonic())
        self._update_quiet()

    def _prune_created(self, key: Key, watched: list[PodView]) -> None:
        """Forget the created pods that the watch shows, or that it has not shown for too long."""
        created = self._created[key]
        shown = {(p.name, p.attempt) for p in watched}
        now = time.monotonic()
        for pod_name, (pod, at) in list(created.items()):
            if (pod.name, pod.attempt) in shown or now - at > CREATED_POD_GRACE_SECONDS:
                del created[pod_name]
                self._unseen -= 1
        if not created:
            del self._created[key]
        self._update_quiet()

    async def _reconcile_once(self, namespace: str, name: str, job: dict[str, Any] | None) -> float | None:
        if job is None or job["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return None
        key = (namespace, name)
        pods = self._with_created(key, list(self.pods_of(namespace, name)))
        pods = await self._observe_pods(job, pods)
        now = _now()
        progress = await self._read_progress(job, pods)
        spec = self._spec(job)
        decision = decide(job, pods, now, self.timing, progress=progress, spec=spec)
        if decision.create_attempt is not None and spec is not None:
            self._to_create += 1
            self._update_quiet()
            try:
                async with self._creating:
                    blocker, created = await self._create(job, spec, decision)
            finally:
                self._to_create -= 1
                self._update_quiet()
            if blocker is not None:
                log = logger.error if blocker.permanent else logger.warning
                log("%s/%s: %s: %s", namespace, name, blocker.reason, blocker.message)
                decision = decide(job, pods, now, self.timing, blocker=blocker, progress=progress, spec=spec)
            elif created:
                # The status written next already counts the pods just created.
                self._remember_created(key, created)
                pods = pods + created
                decision = decide(job, pods, now, self.timing, progress=progress, spec=spec)
        if self._report_can_wait(key, job, decision):
            # Woken at once, the next pass waits in `reconcile` for the API server to catch up.
            return 0.0
        self._report_waits.pop(key, None)
        await self._write_status(job, decision)
        for pod_name in decision.delete_pods:
            await self.kube.delete(path("v1", "Pod", namespace, pod_name), grace_seconds=decision.grace_seconds)
        if decision.delete_job:
            logger.info("%s/%s: ttlSecondsAfterFinished passed, deleting the job", namespace, name)
            await self.kube.delete(job_path(namespace, name), propagation="Background")
            return None
        return decision.wake_after

    def _report_can_wait(self, key: Key, job: dict[str, Any], decision: Decision) -> bool:
        """Whether this startup report may wait while the API server is busy with other jobs' pods."""
        if not self._busy(key) or decision.delete_pods or decision.delete_job or decision.reason not in STARTUP_REASONS:
            return False
        old = job.get("status") or {}
        if old.get("phase") not in (None, "Pending") or not diff(old, decision.status):
            return False
        first = self._report_waits.setdefault(key, time.monotonic())
        return time.monotonic() - first < REPORT_WAIT_SECONDS

    async def _wait_while_busy(self, key: Key) -> None:
        """A job whose report is waiting sleeps until every pod is created and seen, or its wait is up."""
        first = self._report_waits.get(key)
        if first is None or not self._busy(key):
            return
        # `_quiet` also waits for this job's own pods to be seen, which is a moment at most.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), timeout=max(0.0, first + REPORT_WAIT_SECONDS - time.monotonic()))

    async def _observe_pods(self, job: dict[str, Any], pods: list[PodView]) -> list[PodView]:
        """The watched pods, with any rank that looks missing from a started gang confirmed by a read.

        The watch can lag a create by a moment; a missing pod ends the attempt, so
        it must really be gone.
        """
        attempt = max([(job.get("status") or {}).get("attempt") or 0, *(p.attempt for p in pods)])
        current = [p for p in pods if p.attempt == attempt]
        nodes = (job.get("spec") or {}).get("nodes") or 1
        if not any(p.started for p in current):
            return pods
        present = {p.rank for p in current}
        meta = job["metadata"]
        for rank in range(nodes):
            if rank in present:
                continue
            body = await self.kube.get(path("v1", "Pod", meta["namespace"], wiring.pod_name(meta["name"], rank)))
            seen = view(body) if body else None
            if seen is not None:
                pods.append(seen)
        return pods

    async def _read_progress(self, job: dict[str, Any], pods: list[PodView]) -> progress_mod.TrainerReading | None:
        status = job.get("status") or {}
        if status.get("phase") != "Running":
            return None
        rank0 = next((p for p in pods if p.attempt == status.get("attempt") and p.rank == 0), None)
        if rank0 is None or rank0.phase != PodPhase.RUNNING or not rank0.ip:
            return None
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        if time.monotonic() < self._next_progress_read.get(key, 0.0):
            return None
        if not progress_mod.is_due(status.get("progress"), _now(), self.timing.progress_interval):
            return None
        self._next_progress_read[key] = time.monotonic() + self.timing.progress_interval
        return await scrape.read(self.http, rank0.ip)

    async def _create(self, job: dict[str, Any], spec: LMTrainingJobSpec, decision: Decision) -> tuple[Blocker | None, list[PodView]]:
        """Create the job's children and the attempt's missing pods: a Blocker says why not,
        else the pods that this call created (not those that were there already)."""
        meta = job["metadata"]
        for field_path, claim in (("spec.checkpoint.claimName", spec.checkpoint.claimName), ("spec.data.claimName", spec.data.claimName)):
            if claim and not await self._claim_exists(meta["namespace"], claim):
                return Blocker(
                    "ClaimNotFound",
                    f"PersistentVolumeClaim {claim!r} ({field_path}) does not exist in namespace {meta['namespace']}; create it or fix {field_path}",
                ), []
        blocker, _ = await self._create_all(job_children(job, spec))
        if blocker is not None:
            return blocker, []
        assert decision.create_attempt is not None
        wanted = set(decision.create_ranks)
        pods = [p for p in attempt_pods(job, decision.create_attempt, spec) if int(p["metadata"]["labels"][wiring.NODE_RANK_LABEL]) in wanted]
        blocker, created = await self._create_all(pods)
        views = [seen for seen in map(view, created) if seen is not None]
        return blocker, views

    async def _claim_exists(self, namespace: str, claim: str) -> bool:
        """Whether the claim exists, read at most every CLAIM_SEEN_SECONDS: many jobs share one claim.
        A claim deleted meanwhile leaves the pods Unschedulable, which the job's status reports."""
        key = (namespace, claim)
        if time.monotonic() < self._claims_seen.get(key, 0.0):
            return True
        if await self.kube.get(path("v1", "PersistentVolumeClaim", namespace, claim)) is None:
            return False
        self._claims_seen[key] = time.monotonic() + CLAIM_SEEN_SECONDS
        return True

    async def _create_all(self, objects: list[dict[str, Any]]) -> tuple[Blocker | None, list[dict[str, Any]]]:
        """Create objects concurrently (each idempotently): the first refusal as a Blocker, and the objects created."""
        results = await asyncio.gather(*(self.kube.create(obj) for obj in objects), return_exceptions=True)
        for obj, result in zip(objects, results):
            if isinstance(result, ApiError) and result.status < 500:
                return _blocker_for(result, f"{obj['kind']} {obj['metadata']['name']}"), []
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return None, [result for result in results if isinstance(result, dict)]

    async def _write_status(self, job: dict[str, Any], decision: Decision) -> None:
        meta = job["metadata"]
        old = job.get("status") or {}
        patch = diff(old, decision.status)
        if not patch:
            return
        written = await self.kube.patch_status(job, patch)
        self._written[_key(written)] = written["metadata"].get("resourceVersion", "")
        self.job_seen(written)
        if old.get("phase") != decision.status.get("phase"):
            logger.info(
                "%s/%s: %s -> %s (%s): %s",
                meta["namespace"], meta["name"], old.get("phase") or "new", decision.status.get("phase"),
                decision.reason, decision.status.get("message"),
            )
        if (decision.status.get("restarts") or 0) > (old.get("restarts") or 0):
            self.metrics.restarts.inc()
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
