"""The operator's pod informer against the real API server: list, watch, resume, relist."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import kopf
import pytest

from kubespeed import wiring
from kubespeed_operator.decide.observed import PodPhase
from kubespeed_operator.run import podwatch
from kubespeed_operator.run.kube import Credentials, Kube
from kubespeed_operator.run.podwatch import PodWatch

JOB = "watched"


def pod(name: str, rank: int, *, job: str = JOB, attempt: int = 1) -> dict[str, Any]:
    labels = {wiring.MANAGED_BY_LABEL: wiring.MANAGED_BY, wiring.JOB_LABEL: job,
              wiring.NODE_RANK_LABEL: str(rank), wiring.ATTEMPT_LABEL: str(attempt)}
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": wiring.TRAINER_CONTAINER_NAME, "image": "busybox"}]}}


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Seen:
    jobs: list[tuple[str, str]] = field(default_factory=list)  # (namespace, job) per change reported
    verbs: list[str] = field(default_factory=list)  # one per API request


@pytest.fixture
def watched(control_plane, namespace) -> Callable[[Callable[..., Awaitable[None]]], None]:
    """Run `scenario(core, watch, seen, paused)` with a PodWatch of `namespace` running;
    `async with paused():` stops the watch for the block and starts it again after, as an
    operator restart would."""
    from kubernetes import client

    core = client.CoreV1Api(control_plane.api_client())
    pki = control_plane.pki
    admin = Credentials(lambda: kopf.ConnectionInfo(
        server=control_plane.server, ca_path=str(pki.ca.cert), certificate_path=str(pki.admin.cert), private_key_path=str(pki.admin.key),
    ))  # fmt: skip

    def run(scenario: Callable[..., Awaitable[None]]) -> None:
        async def main() -> None:
            seen = Seen()
            async with Kube(admin, on_request=lambda verb, code: seen.verbs.append(verb)) as kube:
                watch = PodWatch(kube, [namespace], on_change=lambda ns, job, prompt: seen.jobs.append((ns, job)))
                tasks = [asyncio.create_task(watch.run())]

                @contextlib.asynccontextmanager
                async def paused() -> AsyncIterator[None]:
                    tasks[-1].cancel()
                    await asyncio.gather(tasks[-1], return_exceptions=True)
                    yield
                    tasks.append(asyncio.create_task(watch.run()))

                try:
                    await scenario(core, watch, seen, paused)
                finally:
                    tasks[-1].cancel()
                    await asyncio.gather(tasks[-1], return_exceptions=True)

        asyncio.run(main())

    return run


def test_listed_pods_then_watched_changes_reach_the_views_and_name_their_job(watched, namespace):
    async def scenario(core, watch, seen, paused):
        core.create_namespaced_pod(namespace, pod("watched-0", 0))
        # An unlabelled pod in the same namespace is not a training pod.
        core.create_namespaced_pod(namespace, {"metadata": {"name": "other"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        await asyncio.wait_for(watch.synced.wait(), 30)
        await until(lambda: [p.name for p in watch.pods_of(namespace, JOB)] == ["watched-0"], "the listed pod")

        created = core.create_namespaced_pod(namespace, pod("watched-1", 1)).metadata.resource_version
        await until(lambda: len(watch.pods_of(namespace, JOB)) == 2, "the created pod")
        # What the operator's expectations compare: the watch has shown everything up to the create.
        assert int(watch.version(namespace)) >= int(created)
        core.patch_namespaced_pod_status("watched-1", namespace, {"status": {"phase": "Running", "podIP": "10.1.2.3"}})
        await until(lambda: any(p.phase == PodPhase.RUNNING and p.ip == "10.1.2.3" for p in watch.pods_of(namespace, JOB)), "the status change")

        core.delete_namespaced_pod("watched-0", namespace, grace_period_seconds=0)
        await until(lambda: [p.name for p in watch.pods_of(namespace, JOB)] == ["watched-1"], "the deletion")
        assert set(seen.jobs) == {(namespace, JOB)} and len(seen.jobs) >= 4
        assert watch.pods_of(namespace, "no-such-job") == []

    watched(scenario)


def test_a_pod_deleted_while_no_watch_ran_is_forgotten_by_the_next_list(watched, namespace):
    async def scenario(core, watch, seen, paused):
        core.create_namespaced_pod(namespace, pod("watched-0", 0))
        core.create_namespaced_pod(namespace, pod("watched-1", 1))
        await asyncio.wait_for(watch.synced.wait(), 30)
        await until(lambda: len(watch.pods_of(namespace, JOB)) == 2, "both pods")
        async with paused():
            core.delete_namespaced_pod("watched-0", namespace, grace_period_seconds=0)
            await asyncio.sleep(0.5)
            assert len(watch.pods_of(namespace, JOB)) == 2
        await until(lambda: [p.name for p in watch.pods_of(namespace, JOB)] == ["watched-1"], "the relist to drop the pod")

    watched(scenario)


def test_a_broken_watch_resumes_from_its_version_and_misses_nothing(watched, namespace, monkeypatch):
    monkeypatch.setattr(podwatch, "WATCH_SECONDS", 1)

    async def scenario(core, watch, seen, paused):
        await asyncio.wait_for(watch.synced.wait(), 30)
        # Each watch ends after a second; pods created across several of them all arrive.
        for rank in range(4):
            core.create_namespaced_pod(namespace, pod(f"watched-{rank}", rank))
            await asyncio.sleep(0.7)
        await until(lambda: len(watch.pods_of(namespace, JOB)) == 4, "all four pods")
        assert seen.verbs.count("GET") == 1 and seen.verbs.count("WATCH") >= 3, seen.verbs

    watched(scenario)


def test_a_pod_larger_than_aiohttps_line_limit_comes_through_the_watch(watched, namespace):
    async def scenario(core, watch, seen, paused):
        await asyncio.wait_for(watch.synced.wait(), 30)
        big = pod("watched-0", 0)
        big["metadata"]["annotations"] = {"example.com/notes": "x" * 200_000}
        core.create_namespaced_pod(namespace, big)
        await until(lambda: len(watch.pods_of(namespace, JOB)) == 1, "the 200 KB pod")
        assert seen.verbs.count("GET") == 1, seen.verbs

    watched(scenario)
