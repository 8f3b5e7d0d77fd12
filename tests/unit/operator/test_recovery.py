"""Recovery as the operator decides it: in-place restarts seen, a silent step, a gang that did not start whole.

Tables of (job status, observed pods, rank 0's reading, clock) -> status, conditions, Events, actions.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from kubespeed.spec.job import RunPolicy
from kubespeed_operator.decide.lifecycle import Timing, decide
from kubespeed_operator.decide.observed import PodView
from kubespeed_operator.decide.progress import TrainerReading
from kubespeed_operator.decide.recovery import read_interval
from kubespeed_operator.decide.status import timestamp
from test_lifecycle import NOW, cond, gang, pod, running_status, with_status


def ago(seconds: float) -> str:
    return timestamp(NOW - timedelta(seconds=seconds))


def running(progress: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return running_status(progress={"step": 50, "updateTime": ago(1), **(progress or {})}, **extra)


def reasons(decision: Any) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in decision.events]


# ------------------------------------------------------------------ in place

def test_an_in_place_restart_rank_0_reports_is_counted_with_an_event(make_job):
    job = with_status(make_job(nodes=2), running({"inPlaceRestarts": 1, "lastAdvanceTime": ago(30)}, inPlaceRestarts=3))
    d = decide(job, gang(2), NOW, progress=TrainerReading(step=50, checkpoint_step=40, in_place_restarts=2))
    assert (d.status["phase"], d.status["inPlaceRestarts"], d.status["progress"]["inPlaceRestarts"]) == ("Running", 4, 2)
    assert d.status["restarts"] == 0 and d.delete_pods == []
    assert cond(d, "Running")["reason"] == "RestartedInPlace" and "restarted in place 2 time(s)" in cond(d, "Running")["message"]
    [event] = d.events
    assert (event.type, event.reason) == ("Warning", "RestartedInPlace")
    assert "2 in attempt 1, 4 in all" in event.message and "step 40" in event.message
    # The restarted ranks are starting: the silence counts from their first step.
    assert "lastAdvanceTime" not in d.status["progress"]


def test_the_same_count_read_again_is_not_a_new_restart(make_job):
    job = with_status(make_job(nodes=2), running({"inPlaceRestarts": 2}, inPlaceRestarts=2))
    d = decide(job, gang(2), NOW, progress=TrainerReading(step=51, in_place_restarts=2))
    assert d.status["inPlaceRestarts"] == 2 and d.events == []


def test_a_new_attempt_counts_its_in_place_restarts_from_0(make_job):
    # The last reading of attempt 1 said 3; attempt 2's pods have just all started.
    old = {**running({"inPlaceRestarts": 3}, inPlaceRestarts=3, attempt=2), "phase": "Pending"}
    started = decide(with_status(make_job(nodes=2), old), gang(2, attempt=2), NOW)
    assert "inPlaceRestarts" not in started.status["progress"] and started.status["inPlaceRestarts"] == 3
    d = decide(with_status(make_job(nodes=2), started.status), gang(2, attempt=2), NOW + timedelta(seconds=5),
               progress=TrainerReading(step=52, in_place_restarts=1))
    assert d.status["inPlaceRestarts"] == 4


# ------------------------------------------------------------------ a silent step

DEADLINE = 60
# In-place recovery's time past the deadline: as long as a start of the ranks may take.
STARTUP_BOUND = 100
STALL_POLICY = {"progressDeadlineSeconds": DEADLINE, "startupTimeoutSeconds": STARTUP_BOUND}


@pytest.mark.parametrize(
    "silent, reading, want_phase, want_stalled, want_events",
    [
        (30, None, "Running", None, []),
        (61, None, "Running", "True", [("Warning", "ProgressDeadlineExceeded")]),
        (61, TrainerReading(step=50), "Running", "True", [("Warning", "ProgressDeadlineExceeded")]),
        (90, TrainerReading(step=51), "Running", None, []),
        (159, None, "Running", "True", [("Warning", "ProgressDeadlineExceeded")]),
        (160, None, "Restarting", None, [("Warning", "ProgressDeadlineExceeded")]),
    ],
    ids=["within-the-deadline", "past-the-deadline-unread", "past-the-deadline-read-the-same-step",
         "the-step-moved-in-time", "in-place-recovery-still-has-a-starts-time",
         "past-the-deadline-and-a-starts-time-recreates-the-gang"],
)
def test_a_step_silent_past_the_deadline_stalls_the_job_then_recreates_the_gang(make_job, silent, reading, want_phase, want_stalled, want_events):
    job = with_status(make_job(nodes=2, runPolicy=STALL_POLICY), running({"lastAdvanceTime": ago(silent)}))
    d = decide(job, gang(2), NOW, progress=reading)
    assert d.status["phase"] == want_phase
    assert (cond(d, "Stalled") or {}).get("status") == want_stalled
    assert reasons(d) == want_events
    if want_stalled == "True":
        assert f"step 50 has not advanced for {silent}s" in cond(d, "Stalled")["message"]
        assert "step 50" in d.events[0].message and f"{silent}s" in d.events[0].message
    if want_phase == "Restarting":
        assert (d.reason, d.status["attempt"], d.status["consecutiveFailures"]) == ("ProgressDeadlineExceeded", 2, 1)
        # Stuck ranks cannot checkpoint: the pods get no grace period to try.
        assert sorted(d.delete_pods) == ["demo-0", "demo-1"] and d.grace_seconds == 1


def test_stalled_is_reported_once_and_clears_when_the_step_moves(make_job):
    job = with_status(make_job(nodes=2, runPolicy=STALL_POLICY), running({"lastAdvanceTime": ago(70)}))
    stalled = decide(job, gang(2), NOW)
    again = decide(with_status(job, stalled.status), gang(2), NOW + timedelta(seconds=5))
    assert again.events == [] and cond(again, "Stalled")["status"] == "True"
    moved = decide(with_status(job, again.status), gang(2), NOW + timedelta(seconds=10), progress=TrainerReading(step=51))
    assert (cond(moved, "Stalled")["status"], cond(moved, "Stalled")["reason"]) == ("False", "StepAdvanced")
    assert reasons(moved) == [("Normal", "StepAdvanced")]


def test_an_in_place_restart_while_stalled_restarts_the_deadline(make_job):
    job = with_status(make_job(nodes=2, runPolicy=STALL_POLICY), running({"lastAdvanceTime": ago(100)}))
    stalled = decide(job, gang(2), NOW)
    d = decide(with_status(job, stalled.status), gang(2), NOW + timedelta(seconds=5), progress=TrainerReading(step=40, in_place_restarts=1))
    assert d.status["phase"] == "Running" and cond(d, "Stalled")["reason"] == "RestartedInPlace"
    assert ("Warning", "RestartedInPlace") in reasons(d)


def test_without_a_deadline_a_silent_step_is_left_alone(make_job):
    job = with_status(make_job(nodes=2), running({"lastAdvanceTime": ago(86400)}))
    d = decide(job, gang(2), NOW)
    assert d.status["phase"] == "Running" and cond(d, "Stalled") is None and d.events == []


def test_the_job_wakes_when_the_deadline_would_pass(make_job):
    job = with_status(make_job(nodes=2, runPolicy=STALL_POLICY), running({"lastAdvanceTime": ago(50)}))
    d = decide(job, gang(2), NOW, Timing(progress_interval=1000, resync=1000))
    assert d.wake_after == pytest.approx(10)


@pytest.mark.parametrize("deadline, want", [(None, 15.0), (300, 15.0), (30, 10.0)])
def test_rank_0_is_read_often_enough_that_a_moving_step_never_looks_silent(deadline, want):
    assert read_interval(15.0, RunPolicy(progressDeadlineSeconds=deadline)) == want


def test_the_silence_counts_from_the_first_step_of_a_gang_just_started(make_job):
    job = with_status(make_job(nodes=2, runPolicy=STALL_POLICY), {"phase": "Pending", "attempt": 1})
    started = decide(job, gang(2), NOW)
    assert "lastAdvanceTime" not in started.status["progress"]
    # Loading a large checkpoint may take far longer than a step: the ranks' watchdog bounds the start-up.
    later = NOW + timedelta(seconds=10 * STARTUP_BOUND)
    loading = decide(with_status(job, started.status), gang(2), later, progress=TrainerReading(total_steps=100))
    assert loading.status["phase"] == "Running" and cond(loading, "Stalled") is None and loading.events == []
    training = decide(with_status(job, loading.status), gang(2), later, progress=TrainerReading(step=0, total_steps=100))
    assert training.status["progress"]["lastAdvanceTime"] == timestamp(later)


def test_a_new_attempt_still_starting_is_never_judged_by_the_last_ones_silence(make_job):
    old = {**running({"lastAdvanceTime": ago(10 * (DEADLINE + STARTUP_BOUND))}, attempt=2), "phase": "Pending"}
    starting = [replace(p, created=ago(5)) for p in (pod(0, attempt=2), pod(1, attempt=2, phase="Pending"))]
    d = decide(with_status(make_job(nodes=2, runPolicy=STALL_POLICY), old), starting, NOW, progress=TrainerReading(step=50))
    assert (d.status["phase"], d.status["attempt"], d.delete_pods) == ("Pending", 2, [])
    assert cond(d, "Stalled") is None and ("Warning", "ProgressDeadlineExceeded") not in reasons(d)


# ------------------------------------------------------------------ start whole or not at all

STARTUP = 120


def pending_job(make_job: Any, **status: Any) -> dict[str, Any]:
    return with_status(make_job(nodes=2, runPolicy={"startupTimeoutSeconds": STARTUP}), {"phase": "Pending", "attempt": 1, **status})


def pods_created(seconds_ago: float, *, rank1: dict[str, Any]) -> list[PodView]:
    """Rank 0 running and rank 1 as `rank1` says, both created `seconds_ago`."""
    return [replace(pod(0), created=ago(seconds_ago)), replace(pod(1, **rank1), created=ago(seconds_ago))]


UNSCHEDULABLE = dict(phase="Pending", reason="Unschedulable", message="0/2 nodes are available: 2 Insufficient nvidia.com/gpu")


def test_a_gang_not_all_running_within_the_startup_bound_is_released_and_retried_later(make_job):
    d = decide(pending_job(make_job, consecutiveFailures=1), pods_created(STARTUP + 1, rank1=UNSCHEDULABLE), NOW, Timing(startup_retry=45))
    assert (d.status["phase"], d.reason, d.status["attempt"]) == ("Pending", "StartupTimeout", 2)
    assert sorted(d.delete_pods) == ["demo-0", "demo-1"] and d.create_ranks == []
    assert (d.status["restarts"], d.status["consecutiveFailures"]) == (0, 1)
    assert d.status["nextAttemptTime"] == timestamp(NOW + timedelta(seconds=45))
    running = cond(d, "Running")
    assert (running["status"], running["reason"]) == ("False", "StartupTimeout")
    assert "demo-1 (Unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu)" in running["message"]
    assert "demo-0 (" not in running["message"]
    assert "not counted against runPolicy.backoffLimit" in running["message"]
    assert ("Warning", "StartupTimeout") in reasons(d)


@pytest.mark.parametrize(
    "rank1",
    [dict(phase="Pending", reason="ErrImagePull", message="pull access denied"), dict(phase="Pending", reason="ContainerCreating")],
    ids=["image-pull", "still-creating"],
)
def test_the_release_names_why_each_pod_was_not_running(make_job, rank1):
    d = decide(pending_job(make_job), pods_created(STARTUP + 1, rank1=rank1), NOW)
    assert f"demo-1 ({rank1['reason']}" in d.status["message"]


def test_within_the_startup_bound_the_gang_waits_and_wakes_at_it(make_job):
    d = decide(pending_job(make_job), pods_created(STARTUP - 20, rank1=UNSCHEDULABLE), NOW, Timing(resync=1000))
    assert d.status["phase"] == "Pending" and d.delete_pods == [] and d.wake_after == pytest.approx(20)


def test_a_gang_that_started_whole_is_never_released(make_job):
    job = with_status(make_job(nodes=2, runPolicy={"startupTimeoutSeconds": STARTUP}), running_status())
    d = decide(job, pods_created(STARTUP * 10, rank1={}), NOW)
    assert d.status["phase"] == "Running" and d.delete_pods == []


def test_the_released_gang_waits_for_its_retry_time_then_starts_the_next_attempt(make_job):
    released = decide(pending_job(make_job), pods_created(STARTUP + 1, rank1=UNSCHEDULABLE), NOW, Timing(startup_retry=45))
    job = with_status(pending_job(make_job), released.status)
    waiting = decide(job, [], NOW + timedelta(seconds=10), Timing(resync=1000))
    assert (waiting.create_ranks, waiting.reason, waiting.wake_after) == ([], "StartupTimeout", pytest.approx(35))
    assert waiting.events == []
    retried = decide(job, [], NOW + timedelta(seconds=46))
    assert (retried.create_attempt, retried.create_ranks) == (2, [0, 1])
    assert "nextAttemptTime" not in retried.status
    # The operator decides again with the pods it just created: the retry time stays cleared.
    just_now = timestamp(NOW + timedelta(seconds=46))
    fresh = [replace(pod(rank, attempt=2, phase="Pending"), created=just_now) for rank in (0, 1)]
    created = decide(job, fresh, NOW + timedelta(seconds=46))
    assert created.create_ranks == [] and "nextAttemptTime" not in created.status


def test_the_startup_bound_defaults_to_the_specs_declaration(make_job):
    job = with_status(make_job(nodes=2), {"phase": "Pending", "attempt": 1})
    default = RunPolicy().startupTimeoutSeconds
    assert decide(job, pods_created(default - 1, rank1=UNSCHEDULABLE), NOW).delete_pods == []
    assert decide(job, pods_created(default, rank1=UNSCHEDULABLE), NOW).reason == "StartupTimeout"

