"""Pods before reports: a starting job's status waits while other jobs still create their pods
and the pod watch has not shown the pods created. And a deleted job's pods are deleted even
when the Lease is stale at the moment the job goes.

The reconciler runs here against an in-memory stand-in for the API that records
every call, can hold one job's creates at a gate, and plays the pod watch when
told to, so the order of writes between two jobs is exact. The same code runs against the real API server in
tests/integration and bench/operator_scale.py.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any, Callable

import pytest

from kubespeed import wiring
from kubespeed_operator.decide.lifecycle import Timing
from kubespeed_operator.decide.observed import view
from kubespeed_operator.run import pods_first
from kubespeed_operator.run.health import Health
from kubespeed_operator.run.jobs import Jobs
from kubespeed_operator.run.metrics import OperatorMetrics
from kubespeed_operator.run.reconciler import Reconciler

NAMESPACE = "team-a"


class RecordingKube:
    """Answers the reconciler's calls in memory and records them as (verb, kind or job, name or phase)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.version = 100
        self.pods: dict[str, list[dict[str, Any]]] = {}

    async def get(self, url_path: str) -> dict[str, Any] | None:
        return None

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        gate = self.gates.get((obj["metadata"].get("labels") or {}).get(wiring.JOB_LABEL, ""))
        if gate is not None:
            await gate.wait()
        what = obj["reason"] if obj["kind"] == "Event" else obj["metadata"]["name"]
        self.calls.append(("create", obj["kind"], what))
        if obj["kind"] == "Pod":
            self.pods.setdefault(obj["metadata"]["labels"][wiring.JOB_LABEL], []).append(copy.deepcopy(obj))
        return copy.deepcopy(obj)

    def watch_shows_pods(self, reconciler: Reconciler) -> None:
        """The pod watch catches up: every pod created so far is in the index, and each job hears of it."""
        reconciler.pods_of = lambda namespace, name: [seen for seen in map(view, self.pods.get(name, [])) if seen]
        for name in self.pods:
            reconciler.pod_seen(NAMESPACE, name)

    async def patch_status(self, job: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("status", job["metadata"]["name"], patch.get("phase", "")))
        self.version += 1
        written = copy.deepcopy(job)
        written["status"] = {**(job.get("status") or {}), **patch}
        written["metadata"]["resourceVersion"] = str(self.version)
        return written

    async def delete(self, url_path: str, **_: Any) -> None:
        self.calls.append(("delete", url_path, ""))

    def status_writes(self, name: str) -> list[str]:
        return [phase for verb, job, phase in self.calls if verb == "status" and job == name]


def _named(make_job: Callable[..., dict[str, Any]], name: str, **spec: Any) -> dict[str, Any]:
    job = make_job(**spec)
    job["metadata"].update(name=name, uid=f"uid-{name}", resourceVersion="1")
    return job


def _reconciler(kube: RecordingKube, *jobs: dict[str, Any]) -> Reconciler:
    registry = Jobs()
    reconciler = Reconciler(kube=kube, jobs=registry, metrics=OperatorMetrics(registry, Health()), timing=Timing(), identity="test", http=None)  # type: ignore[arg-type]
    for job in jobs:
        reconciler.job_seen(job)
    return reconciler


async def _woken(reconciler: Reconciler, name: str) -> float | None:
    """A pass as a wake runs it (`run.workers`): once the job's report may go, then the reconcile."""
    await reconciler.pods_first.wait_to_report((NAMESPACE, name))
    return await reconciler.reconcile(NAMESPACE, name)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _b_started_while_a_creates(make_job: Callable[..., dict[str, Any]]) -> tuple[RecordingKube, Reconciler, asyncio.Task]:
    """Job a's creates held at the gate (its pass, still running, is returned); job b creates
    its pods meanwhile, and its report waits."""
    kube = RecordingKube()
    kube.gates["a"] = asyncio.Event()
    reconciler = _reconciler(kube, _named(make_job, "a"), _named(make_job, "b"))
    first = asyncio.create_task(reconciler.reconcile(NAMESPACE, "a"))
    await _settle()
    assert await reconciler.reconcile(NAMESPACE, "b") == 0.0
    assert ("create", "Pod", "b-0") in kube.calls
    assert kube.status_writes("b") == [] and not [c for c in kube.calls if c[1] == "Event"]
    return kube, reconciler, first


def test_a_starting_job_reports_once_the_other_jobs_have_their_pods(make_job: Callable[..., dict[str, Any]]) -> None:
    async def scenario() -> None:
        kube, reconciler, first = await _b_started_while_a_creates(make_job)
        second = asyncio.create_task(_woken(reconciler, "b"))
        await asyncio.sleep(0.05)
        assert not second.done()
        kube.gates["a"].set()
        # a has its pods now, but the watch has shown neither job's: both reports wait.
        assert await asyncio.wait_for(first, timeout=5) == 0.0
        await asyncio.sleep(0.05)
        assert not second.done() and kube.status_writes("a") == []
        kube.watch_shows_pods(reconciler)
        await asyncio.wait_for(asyncio.gather(second, _woken(reconciler, "a")), timeout=5)
        # Every pod was created before any status was written; each job wrote its status once.
        first_status = next(i for i, call in enumerate(kube.calls) if call[0] == "status")
        assert all(call[0] == "create" and call[1] != "Event" for call in kube.calls[:first_status])
        assert ("create", "Pod", "a-0") in kube.calls[:first_status]
        assert kube.status_writes("a") == ["Pending"] and kube.status_writes("b") == ["Pending"]
        assert ("create", "Event", "PodsStarting") in kube.calls

    asyncio.run(scenario())


def test_a_problem_is_reported_at_once_while_other_jobs_create(make_job: Callable[..., dict[str, Any]]) -> None:
    async def scenario() -> None:
        kube = RecordingKube()
        kube.gates["a"] = asyncio.Event()
        broken = _named(make_job, "b", checkpoint__claimName="missing")
        reconciler = _reconciler(kube, _named(make_job, "a"), broken)
        first = asyncio.create_task(reconciler.reconcile(NAMESPACE, "a"))
        await _settle()
        await reconciler.reconcile(NAMESPACE, "b")
        assert kube.status_writes("b") == ["Pending"]
        assert ("create", "Event", "ClaimNotFound") in kube.calls
        kube.gates["a"].set()
        await asyncio.wait_for(first, timeout=5)

    asyncio.run(scenario())


def test_a_report_waits_no_longer_than_its_limit(make_job: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pods_first, "REPORT_WAIT_SECONDS", 0.1)

    async def scenario() -> None:
        kube, reconciler, first = await _b_started_while_a_creates(make_job)
        # a never finishes creating here; b's report goes out when its wait is up.
        await asyncio.wait_for(_woken(reconciler, "b"), timeout=5)
        assert kube.status_writes("b") == ["Pending"]
        assert kube.status_writes("a") == []
        kube.gates["a"].set()
        await asyncio.wait_for(first, timeout=5)

    asyncio.run(scenario())


def test_a_lone_job_reports_in_the_pass_that_creates_its_pods(make_job: Callable[..., dict[str, Any]]) -> None:
    async def scenario() -> None:
        kube = RecordingKube()
        reconciler = _reconciler(kube, _named(make_job, "a"))
        # Its own pods not yet seen on the watch do not hold its report back.
        await reconciler.reconcile(NAMESPACE, "a")
        assert kube.status_writes("a") == ["Pending"]
        assert [c for c in kube.calls if c[1] == "Event"] == [("create", "Event", "PodsStarting")]

    asyncio.run(scenario())


def test_pods_of_a_job_deleted_while_the_lease_is_stale_are_deleted_once_it_is_renewed(make_job: Callable[..., dict[str, Any]]) -> None:
    async def scenario() -> None:
        kube = RecordingKube()
        job = _named(make_job, "gone")
        reconciler = _reconciler(kube, job)
        await reconciler.reconcile(NAMESPACE, "gone")
        kube.watch_shows_pods(reconciler)
        fresh = False
        reconciler.may_act = lambda: fresh
        reconciler.job_gone(job)
        await asyncio.sleep(0.05)
        assert not [call for call in kube.calls if call[0] == "delete"]
        fresh = True

        async def deleted() -> list[str]:
            while not (urls := [url for verb, url, _ in kube.calls if verb == "delete"]):
                await asyncio.sleep(0.05)
            return sorted(url.rsplit("/", 1)[1] for url in urls)

        assert await asyncio.wait_for(deleted(), timeout=5) == ["gone-0"]
        await reconciler.close()

    asyncio.run(scenario())
