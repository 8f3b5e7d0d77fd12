"""Self-healing, end to end: real operator (under the shipped RBAC), real control plane, the test
node agent as kubelet, real DeepSpeed over gloo on the CPU, 2 pods x 1 rank of the tiny GPT.

- a killed rank is restarted in place: same pods (same UIDs), the loss curve goes on;
- a pod deleted by hand cannot be recovered in place: the gang is recreated and resumes;
- a frozen rank (SIGSTOP) is reported Stalled and recovered in place by its watchdog;
- the retry budget: failures each followed by a newer checkpoint never fail a job with
  backoffLimit 1; failures without one do.

    .venv/bin/python -m pytest tests/e2e/test_recovery.py
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from training_helpers import STEP_SECONDS, Training, of_kind, rank_process, start, wait_for

from kubespeed import wiring

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Long enough for the slowest step with a checkpoint on a loaded 2-core machine, and for a restart.
PROGRESS_DEADLINE = 20


def uids(training: Training) -> dict[str, str]:
    return {pod.metadata.name: pod.metadata.uid for pod in training.jobs.pods(training.name)}


def reasons(training: Training) -> list[tuple[str, str]]:
    return [(kind, reason) for kind, reason, _ in training.jobs.events(training.name)]


def of_attempt(lines: list[dict[str, Any]], attempt: int) -> list[list[dict[str, Any]]]:
    """The runs of the trainer in one attempt, each from its `start` line on."""
    runs: list[list[dict[str, Any]]] = []
    current = None
    for line in lines:
        if line["kind"] == "start":
            current = line.get("attempt")
            if current == attempt:
                runs.append([])
        if current == attempt and runs:
            runs[-1].append(line)
    return runs


def kill_rank(training: Training, node_rank: int, sig: int = signal.SIGKILL) -> None:
    rank_process(training.agent, training.name, node_rank=node_rank, local_rank=0).send_signal(sig)


def test_a_killed_rank_recovers_in_place_with_the_same_pods_and_the_loss_curve_goes_on(training: Training) -> None:
    steps = 80
    start(training, steps=steps, checkpoint_interval=10)
    wait_for(lambda: [c for c in of_kind(training.metrics(), "checkpoint") if c["step"] >= 20], "a checkpoint at step 20",
             STEP_SECONDS, explain=training.explain)  # fmt: skip
    pods = uids(training)
    kill_rank(training, node_rank=1)
    status = training.wait_phase("Succeeded")

    assert uids(training) == pods, "in-place recovery keeps the pods"
    assert (status["attempt"], status["restarts"], status["inPlaceRestarts"]) == (1, 0, 1)
    assert ("Warning", "RestartedInPlace") in reasons(training)
    before, after = of_attempt(training.metrics(), 1)
    assert after[0]["inPlaceRestarts"] == 1
    saved = of_kind(before, "checkpoint")[-1]["step"]
    assert of_kind(after, "resume")[0]["step"] == saved
    resumed = of_kind(after, "train")
    assert resumed[0]["step"] == saved + 1 and resumed[-1]["step"] == steps
    # The curve goes on from the checkpoint: the same data, the same state, so the steps both runs
    # trained give the same losses, and none of the new ones is a fresh model's.
    first_run = {line["step"]: line["loss"] for line in of_kind(before, "train")}
    for line in resumed:
        if line["step"] in first_run:
            assert line["loss"] == pytest.approx(first_run[line["step"]], abs=1e-3), line["step"]
    assert max(line["loss"] for line in resumed) < first_run[1] - 0.5


def test_a_pod_deleted_by_hand_falls_back_to_a_gang_restart_that_resumes(training: Training) -> None:
    steps = 100
    # No periodic checkpoint: the one to resume from is the one the SIGTERM of the deletion writes.
    start(training, steps=steps, checkpoint_interval=1000)
    training.wait_step(3)
    pods = uids(training)
    training.jobs.core.delete_namespaced_pod(wiring.pod_name(training.name, 1), training.jobs.namespace)
    status = training.wait_phase("Succeeded")

    assert not set(uids(training).values()) & set(pods.values()), "the gang was recreated"
    assert (status["attempt"], status["restarts"], status["disruptions"]) == (2, 1, 1)
    assert ("Warning", "PodDeleted") in reasons(training)
    first, [second] = of_attempt(training.metrics(), 1)[-1], of_attempt(training.metrics(), 2)
    saved = of_kind(first, "checkpoint")[-1]["step"]
    assert of_kind(second, "resume")[0]["step"] == saved >= 3
    assert of_kind(second, "train")[-1]["step"] == steps


def test_a_frozen_rank_is_reported_stalled_and_recovered_in_place(training: Training) -> None:
    start(training, steps=150, checkpoint_interval=5, run_policy={"progressDeadlineSeconds": PROGRESS_DEADLINE})
    wait_for(lambda: of_kind(training.metrics(), "checkpoint"), "a first checkpoint", STEP_SECONDS, explain=training.explain)
    pods = uids(training)
    kill_rank(training, node_rank=1, sig=signal.SIGSTOP)
    status = training.wait_phase("Succeeded")

    events = training.jobs.events(training.name)
    stalls = [message for kind, reason, message in events if reason == "ProgressDeadlineExceeded"]
    assert len(stalls) == 1, f"{events}\n{training.metrics()}"
    [stalled] = stalls
    assert "has not advanced for" in stalled and f"runPolicy.progressDeadlineSeconds is {PROGRESS_DEADLINE}s" in stalled
    assert ("Warning", "RestartedInPlace") in reasons(training)
    assert uids(training) == pods, "the watchdog's kill is recovered in place"
    assert (status["attempt"], status["restarts"]) == (1, 0) and status["inPlaceRestarts"] >= 1
    condition = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert condition["status"] == "False"


def checkpoint_seen(training: Training) -> int:
    return (training.jobs.status(training.name).get("checkpoint") or {}).get("step") or 0


def test_failures_each_followed_by_a_newer_checkpoint_never_fail_a_job_with_backoff_limit_1(training: Training) -> None:
    # Without in-place restarts, every killed rank is a failure the operator counts.
    start(training, steps=100_000, checkpoint_interval=5, run_policy={"backoffLimit": 1, "maxInPlaceRestarts": 0})
    last = 0
    for attempt in (1, 2, 3):
        last = wait_for(lambda: training.jobs.status(training.name).get("attempt") == attempt and checkpoint_seen(training) > last
                        and checkpoint_seen(training), f"a checkpoint newer than step {last} in attempt {attempt}",
                        STEP_SECONDS, explain=training.explain)  # fmt: skip
        kill_rank(training, node_rank=1)
        wait_for(lambda: (training.jobs.status(training.name).get("attempt") or 0) > attempt, f"attempt {attempt + 1}",
                 STEP_SECONDS, explain=training.explain)  # fmt: skip
    wait_for(lambda: checkpoint_seen(training) > last, "a checkpoint in attempt 4", STEP_SECONDS, explain=training.explain)
    status = training.jobs.status(training.name)
    assert (status["phase"], status["attempt"], status["restarts"]) == ("Running", 4, 3)
    assert "consecutiveFailures" not in status
    assert ("Warning", "BackoffLimitExceeded") not in reasons(training)


def test_failures_without_progress_fail_a_job_with_backoff_limit_1_at_the_second(training: Training) -> None:
    start(training, steps=100_000, checkpoint_interval=100_000, run_policy={"backoffLimit": 1, "maxInPlaceRestarts": 0})
    training.wait_step(3)
    kill_rank(training, node_rank=1)
    wait_for(lambda: [line for run in of_attempt(training.metrics(), 2) for line in of_kind(run, "train")],
             "attempt 2 to train", STEP_SECONDS, explain=training.explain)  # fmt: skip
    kill_rank(training, node_rank=1)
    status = training.wait_phase("Failed")

    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "2 failures in a row with no newer complete checkpoint" in failed["message"]
    assert (status["attempt"], status["restarts"], status["consecutiveFailures"]) == (2, 1, 2)
