"""The per-job tasks: how wakes become reconciles (one per burst, prompt ones first, none lost)."""

from __future__ import annotations

import asyncio

import pytest

from kubespeed_operator.decide.observed import PodPhase, PodView, ProbeView, needs_prompt_look
from kubespeed_operator.run import workers
from kubespeed_operator.run.workers import Workers

JOB = ("team-a", "train")


class Counting:
    """A reconcile that counts its passes and ends the job's task (None: no timer)."""

    def __init__(self) -> None:
        self.passes = 0
        self.done = asyncio.Event()

    async def __call__(self, namespace: str, name: str) -> float | None:
        self.passes += 1
        self.done.set()
        return None


def test_a_burst_of_wakes_is_one_reconcile() -> None:
    async def scenario() -> None:
        reconcile = Counting()
        tasks = Workers(reconcile)
        for _ in range(5):
            tasks.wake(*JOB)
        await asyncio.wait_for(reconcile.done.wait(), timeout=5)
        await asyncio.sleep(0.05)
        assert reconcile.passes == 1

    asyncio.run(scenario())


def test_a_prompt_wake_does_not_wait_for_a_pending_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "BATCH_SECONDS", 3600.0)

    async def scenario() -> None:
        reconcile = Counting()
        tasks = Workers(reconcile)
        tasks.wake(*JOB, within=workers.BATCH_SECONDS)
        await asyncio.sleep(0.3)
        assert reconcile.passes == 0, "a wake that can wait was taken before its batch"
        tasks.wake(*JOB)
        await asyncio.wait_for(reconcile.done.wait(), timeout=5)
        assert reconcile.passes == 1

    asyncio.run(scenario())


def test_wakes_while_the_job_waits_to_be_ready_are_taken_by_the_reconcile_after_the_wait() -> None:
    async def scenario() -> None:
        reconcile = Counting()
        waiting, release = asyncio.Event(), asyncio.Event()

        async def ready(key: tuple[str, str]) -> None:
            waiting.set()
            await release.wait()

        tasks = Workers(reconcile, ready=ready)
        tasks.wake(*JOB)
        await asyncio.wait_for(waiting.wait(), timeout=5)
        for _ in range(3):
            tasks.wake(*JOB)
        release.set()
        await asyncio.wait_for(reconcile.done.wait(), timeout=5)
        await asyncio.sleep(0.5)
        assert reconcile.passes == 1

    asyncio.run(scenario())


def test_a_wake_during_a_reconcile_is_another_reconcile() -> None:
    async def scenario() -> None:
        passes: list[int] = []
        tasks: Workers

        async def reconcile(namespace: str, name: str) -> float | None:
            passes.append(len(passes))
            if len(passes) == 1:
                tasks.wake(namespace, name)  # what it decided from may be stale already
            return 3600.0

        tasks = Workers(reconcile)
        tasks.wake(*JOB)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(passes) == 2:
                break
        await asyncio.sleep(0.3)
        await tasks.stop()
        assert passes == [0, 1]

    asyncio.run(scenario())


RUNNING = PodView(name="train-0", rank=0, attempt=1, phase=PodPhase.RUNNING, ready=True, ip="10.0.0.1")


@pytest.mark.parametrize(
    ("now", "prompt"),
    [
        pytest.param(None, True, id="gone"),
        pytest.param(PodView(name="train-0", rank=0, attempt=1), False, id="came-pending"),
        pytest.param(RUNNING, False, id="started-and-ready"),
        pytest.param(PodView(name="train-0", rank=0, attempt=1, reason="Unschedulable"), False, id="cannot-be-placed"),
        pytest.param(PodView(name="train-0", rank=0, attempt=1, reason="ErrImagePull"), False, id="image-pull-waiting"),
        pytest.param(PodView(name="train-0", rank=0, attempt=1, phase=PodPhase.FAILED, exit_code=1), True, id="failed"),
        pytest.param(PodView(name="train-0", rank=0, attempt=1, phase=PodPhase.SUCCEEDED, exit_code=0), True, id="succeeded"),
        pytest.param(PodView(name="train-0", rank=0, attempt=1, phase=PodPhase.RUNNING, exit_code=137), True, id="container-ended"),
        pytest.param(PodView(name="train-0", rank=0, attempt=1, phase=PodPhase.RUNNING, deleting=True), True, id="being-deleted"),
        pytest.param(PodView(name="train-0", rank=0, attempt=1, phase=PodPhase.RUNNING, disrupted=True), True, id="preempted"),
        pytest.param(ProbeView(name="train-probe-0", index=0, node="gpu-node-1"), False, id="probe-placed"),
    ],
)
def test_only_a_change_that_may_end_the_attempt_needs_a_prompt_look(now: PodView | ProbeView | None, prompt: bool) -> None:
    assert needs_prompt_look(now) is prompt
