"""The lifecycle decision as tables: (job, observed pods, clock) -> phase, reason, actions.

No cluster: pods are `PodView`s as the pod watch would show them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kubespeed import wiring
from kubespeed.spec.job import RunPolicy
from kubespeed_operator.decide.lifecycle import Blocker, Timing, decide
from kubespeed_operator.decide.observed import PodView, view
from kubespeed_operator.decide.progress import TrainerReading
from kubespeed_operator.decide.status import timestamp

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
EARLIER = timestamp(NOW - timedelta(minutes=5))


def pod(rank: int, attempt: int = 1, phase: str = "Running", **kw: Any) -> PodView:
    return PodView(name=f"demo-{rank}", rank=rank, attempt=attempt, phase=phase, ready=phase == "Running", created=EARLIER, **kw)


def gang(n: int = 2, attempt: int = 1, phase: str = "Running") -> list[PodView]:
    return [pod(r, attempt, phase) for r in range(n)]


def running_status(attempt: int = 1, restarts: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "phase": "Running",
        "attempt": attempt,
        "restarts": restarts,
        "startTime": EARLIER,
        "conditions": [{"type": "Running", "status": "True", "reason": "PodsRunning", "message": "", "lastTransitionTime": EARLIER}],
        **extra,
    }


def with_status(job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {**job, "status": status}


def cond(decision: Any, ctype: str) -> dict[str, Any] | None:
    return next((c for c in decision.status.get("conditions", []) if c["type"] == ctype), None)


# ------------------------------------------------------------------ the happy path

def test_a_new_job_creates_every_rank_of_attempt_1(make_job):
    d = decide(make_job(nodes=4), [], NOW)
    assert (d.status["phase"], d.status["attempt"], d.create_attempt, d.create_ranks) == ("Pending", 1, 1, [0, 1, 2, 3])
    assert [e.reason for e in d.events] == ["CreatingPods"]


def test_only_missing_ranks_are_created_before_the_gang_starts(make_job):
    d = decide(make_job(nodes=4), [pod(0, phase="Pending")], NOW)
    assert (d.create_attempt, d.create_ranks) == (1, [1, 2, 3])


@pytest.mark.parametrize(
    "phases, want",
    [
        (["Pending", "Pending"], "Pending"),
        (["Running", "Pending"], "Pending"),
        (["Running", "Running"], "Running"),
        (["Succeeded", "Running"], "Running"),
        (["Succeeded", "Succeeded"], "Succeeded"),
    ],
    ids=["all-pending", "one-running", "all-running", "rank0-done-first", "all-succeeded"],
)
def test_phase_follows_the_pods(make_job, phases, want):
    pods = [pod(r, phase=p) for r, p in enumerate(phases)]
    d = decide(with_status(make_job(nodes=2), {"phase": "Pending", "attempt": 1}), pods, NOW)
    assert d.status["phase"] == want
    assert d.create_ranks == []


def test_running_sets_created_and_running_conditions_and_counts(make_job):
    d = decide(with_status(make_job(nodes=2), {"phase": "Pending", "attempt": 1}), gang(2), NOW)
    assert cond(d, "Created")["status"] == "True"
    assert cond(d, "Running")["status"] == "True"
    assert d.status["replicas"] == {"active": 2, "ready": 2, "succeeded": 0, "failed": 0}
    assert d.status["startTime"] == EARLIER
    assert d.status["observedGeneration"] == 1


def test_a_condition_keeps_its_transition_time_while_its_status_holds(make_job):
    job = with_status(make_job(nodes=2), running_status())
    d = decide(job, gang(2), NOW)
    assert cond(d, "Running")["lastTransitionTime"] == EARLIER
    assert d.events == []


def test_success_ends_the_job_and_keeps_finished_pods(make_job):
    d = decide(with_status(make_job(nodes=2), running_status()), gang(2, phase="Succeeded"), NOW)
    assert d.status["phase"] == "Succeeded" and d.status["completionTime"] == timestamp(NOW)
    assert d.delete_pods == []
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "Succeeded")]


# ------------------------------------------------------------------ gang restart

FAILED_1 = dict(phase="Failed", exit_code=1, reason="Error")


@pytest.mark.parametrize(
    "policy, exit_code, restarts, want_phase, want_reason",
    [
        ({}, 1, 0, "Restarting", "PodFailed"),
        ({}, 137, 2, "Restarting", "PodFailed"),
        ({}, wiring.EXIT_PREEMPTED.code, 0, "Restarting", "PodDisrupted"),
        ({}, wiring.EXIT_CONFIG_ERROR.code, 0, "Failed", "ConfigError"),
        ({}, wiring.EXIT_DATA_ERROR.code, 0, "Failed", "DataError"),
        ({"restartPolicy": "OnFailure"}, wiring.EXIT_CONFIG_ERROR.code, 0, "Restarting", "ConfigError"),
        ({"restartPolicy": "Never"}, 1, 0, "Failed", "PodFailed"),
        ({"backoffLimit": 3}, 1, 3, "Failed", "BackoffLimitExceeded"),
        ({"backoffLimit": 0}, 1, 0, "Failed", "BackoffLimitExceeded"),
    ],
    ids=[
        "crash-restarts", "oom-restarts-within-limit", "preempted-restarts", "config-error-fails-at-once",
        "data-error-fails-at-once", "on-failure-restarts-even-permanent", "never-fails", "backoff-exhausted",
        "backoff-zero",
    ],
)
def test_a_failed_pod_ends_the_attempt(make_job, policy, exit_code, restarts, want_phase, want_reason):
    job = with_status(make_job(nodes=2, runPolicy=policy), running_status(restarts=restarts, consecutiveFailures=restarts))
    pods = [pod(0), pod(1, phase="Failed", exit_code=exit_code, reason="Error")]
    d = decide(job, pods, NOW)
    assert (d.status["phase"], d.reason) == (want_phase, want_reason)
    if want_phase == "Restarting":
        assert (d.status["attempt"], d.status["restarts"]) == (2, restarts + 1)
        assert sorted(d.delete_pods) == ["demo-0", "demo-1"]
        assert d.create_ranks == []
        assert d.events[0].type == "Warning" and "attempt 2" in d.events[0].message
    else:
        assert d.status["attempt"] == 1 and d.status["completionTime"]
        assert d.delete_pods == ["demo-0"]  # cleanPodPolicy Running: the still-running rank goes
        assert str(exit_code) in d.status["message"]


@pytest.mark.parametrize(
    "name, exit_code, message, quoted",
    [
        ("the launcher's one line", wiring.EXIT_DATA_ERROR.code, "rank 0: spec.data: data source /data/nonexistent.txt does not exist",
         "exited with code 65: rank 0: spec.data: data source /data/nonexistent.txt does not exist"),
        ("the last line of a log tail", 1, "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error: out of memory\n\n",
         "exited with code 1: RuntimeError: CUDA error: out of memory"),
        ("no message: what the code means", wiring.EXIT_CONFIG_ERROR.code, None, "exited with code 64 (the job's configuration is invalid"),
    ],
)
def test_the_failing_ranks_own_words_reach_the_condition_and_the_event(make_job, name, exit_code, message, quoted):
    job = with_status(make_job(nodes=2), running_status())
    d = decide(job, [pod(0), pod(1, phase="Failed", exit_code=exit_code, reason="Error", message=message)], NOW)
    assert quoted in d.status["message"], name
    assert quoted in cond(d, d.status["phase"])["message"]
    assert quoted in d.events[0].message


@pytest.mark.parametrize(
    "name, attempt, want_phase",
    [
        ("the first attempt: no retry will see one either", 1, "Failed"),
        ("a later attempt: the GPUs were there before, another node may have them", 3, "Restarting"),
    ],
)
def test_no_gpu_visible_fails_the_first_attempt_with_the_runtime_class_hint(make_job, name, attempt, want_phase):
    job = with_status(make_job(nodes=2), running_status(attempt=attempt, restarts=attempt - 1))
    line = "rank 0: spec.gpu is true but this pod sees 0 GPU(s) for its 1 rank(s) (CUDA_VISIBLE_DEVICES=unset)"
    pods = [pod(0, attempt), pod(1, attempt, phase="Failed", exit_code=wiring.EXIT_NO_GPU.code, reason="Error", message=line)]
    d = decide(job, pods, NOW)
    assert (d.status["phase"], d.reason) == (want_phase, "NoGPUVisible"), name
    assert "sees 0 GPU(s)" in d.status["message"]
    assert ("spec.runtimeClassName" in d.status["message"]) == (want_phase == "Failed")


def test_ending_an_attempt_uses_the_specs_grace_period(make_job):
    job = with_status(make_job(nodes=2, runPolicy={"terminationGracePeriodSeconds": 77}), running_status())
    d = decide(job, [pod(0), pod(1, **FAILED_1)], NOW)
    assert d.grace_seconds == 77


@pytest.mark.parametrize(
    "failed",
    [
        dict(phase="Failed", exit_code=wiring.EXIT_PREEMPTED.code, reason="Error"),
        dict(phase="Failed", exit_code=137, reason="Error", disrupted=True),
        dict(phase="Failed", reason="Evicted", message="The node was low on resource: memory.", disrupted=True),
    ],
    ids=["sigterm-exit-after-checkpoint", "killed-after-preemption", "evicted"],
)
def test_a_disruption_restarts_the_gang_without_spending_the_backoff_limit(make_job, failed):
    job = with_status(make_job(nodes=2, runPolicy={"backoffLimit": 1}), running_status(restarts=3, disruptions=2))
    d = decide(job, [pod(0), pod(1, **failed)], NOW)
    assert (d.status["phase"], d.reason) == ("Restarting", "PodDisrupted")
    assert (d.status["attempt"], d.status["restarts"], d.status["disruptions"]) == (2, 4, 3)
    assert "not counted against runPolicy.backoffLimit" in d.events[0].message


def test_failures_in_a_row_without_a_newer_checkpoint_spend_the_backoff_limit_beside_disruptions(make_job):
    # 3 restarts, 2 of them disruptions: the other was a failure, and no checkpoint came after it.
    job = with_status(make_job(nodes=2, runPolicy={"backoffLimit": 1}), running_status(restarts=3, disruptions=2, consecutiveFailures=1))
    d = decide(job, [pod(0), pod(1, **FAILED_1)], NOW)
    assert (d.status["phase"], d.reason) == ("Failed", "BackoffLimitExceeded")
    assert "2 failures in a row with no newer complete checkpoint" in d.status["message"]


@pytest.mark.parametrize(
    "checkpoint_before, checkpoint_now, want_phase, want_failures",
    [(100, 120, "Restarting", 1), (100, 100, "Failed", 2), (None, 20, "Restarting", 1)],
    ids=["a-newer-checkpoint-gives-the-budget-back", "the-same-checkpoint-does-not", "a-first-checkpoint-does"],
)
def test_a_newer_checkpoint_seen_before_a_failure_gives_the_budget_back(make_job, checkpoint_before, checkpoint_now, want_phase, want_failures):
    status = running_status(restarts=1, consecutiveFailures=1)
    if checkpoint_before is not None:
        status["checkpoint"] = {"step": checkpoint_before, "path": f"step{checkpoint_before:08d}", "time": EARLIER}
    job = with_status(make_job(nodes=2, runPolicy={"backoffLimit": 1}), status)
    d = decide(job, [pod(0), pod(1, **FAILED_1)], NOW, progress=TrainerReading(step=130, checkpoint_step=checkpoint_now))
    assert (d.status["phase"], d.status.get("consecutiveFailures")) == (want_phase, want_failures)


def test_a_newer_checkpoint_while_running_sets_the_failure_count_back_to_0(make_job):
    status = running_status(restarts=2, consecutiveFailures=2, checkpoint={"step": 40, "path": "step00000040", "time": EARLIER})
    d = decide(with_status(make_job(nodes=2), status), gang(2), NOW, progress=TrainerReading(step=61, checkpoint_step=60))
    assert "consecutiveFailures" not in d.status and d.status["checkpoint"]["step"] == 60 and d.status["restarts"] == 2


def test_in_place_recovery_that_gave_up_recreates_the_gang_as_a_failure(make_job):
    job = with_status(make_job(nodes=2), running_status())
    d = decide(job, [pod(0), pod(1, phase="Failed", exit_code=wiring.EXIT_IN_PLACE_FAILED.code, reason="Error")], NOW)
    assert (d.status["phase"], d.reason, d.status["consecutiveFailures"]) == ("Restarting", "InPlaceRecoveryFailed", 1)


def test_a_rank_deleted_while_training_is_a_disruption(make_job):
    job = with_status(make_job(nodes=2, runPolicy={"backoffLimit": 0}), running_status())
    d = decide(job, [pod(0), pod(1, deleting=True)], NOW)
    assert (d.status["phase"], d.status["disruptions"]) == ("Restarting", 1)


def test_restart_policy_never_fails_even_a_disrupted_job(make_job):
    job = with_status(make_job(nodes=2, runPolicy={"restartPolicy": "Never"}), running_status())
    d = decide(job, [pod(0), pod(1, phase="Failed", exit_code=wiring.EXIT_PREEMPTED.code)], NOW)
    assert d.status["phase"] == "Failed"


def test_the_next_attempt_waits_until_the_old_pods_are_gone(make_job):
    job = with_status(make_job(nodes=2), running_status(attempt=2, restarts=1) | {"phase": "Restarting"})
    terminating = [pod(0, deleting=True), pod(1, **FAILED_1, deleting=True)]
    d = decide(job, terminating, NOW)
    assert (d.status["phase"], d.create_ranks, d.delete_pods) == ("Restarting", [], [])


def test_old_pods_not_yet_deleted_are_deleted_first(make_job):
    job = with_status(make_job(nodes=2), running_status(attempt=2, restarts=1) | {"phase": "Restarting"})
    d = decide(job, [pod(0), pod(1, deleting=True)], NOW)
    assert d.delete_pods == ["demo-0"] and d.create_ranks == []


def test_once_old_pods_are_gone_the_next_attempt_is_created(make_job):
    job = with_status(make_job(nodes=2), running_status(attempt=2, restarts=1) | {"phase": "Restarting"})
    d = decide(job, [], NOW)
    assert (d.status["phase"], d.create_attempt, d.create_ranks) == ("Pending", 2, [0, 1])


def test_a_stale_status_never_deletes_pods_of_a_newer_attempt(make_job):
    job = with_status(make_job(nodes=2), running_status(attempt=1))
    d = decide(job, gang(2, attempt=2), NOW)
    assert d.status["attempt"] == 2 and d.delete_pods == [] and d.status["phase"] == "Running"


@pytest.mark.parametrize(
    "pods",
    [[pod(0)], [pod(0), pod(1, deleting=True)]],
    ids=["rank-missing", "rank-deleted-by-someone-else"],
)
def test_losing_a_rank_after_the_gang_started_restarts_it(make_job, pods):
    d = decide(with_status(make_job(nodes=2), running_status()), pods, NOW)
    assert (d.status["phase"], d.reason, d.status["attempt"]) == ("Restarting", "PodDeleted", 2)


# ------------------------------------------------------------------ specs only the operator can judge

def test_an_image_that_can_never_be_pulled_fails_the_job(make_job):
    pods = [pod(0, phase="Pending", reason="InvalidImageName", message='Failed to apply default image tag "UPPER": invalid'), pod(1, phase="Pending")]
    d = decide(with_status(make_job(nodes=2), {"phase": "Pending", "attempt": 1}), pods, NOW)
    assert (d.status["phase"], d.reason) == ("Failed", "ImagePullFailed")
    assert "spec.image" in d.status["message"]


@pytest.mark.parametrize(
    "reason, hint",
    [("ErrImagePull", "spec.image"), ("ImagePullBackOff", "spec.image"), ("Unschedulable", "spec.resources")],
)
def test_a_pod_that_cannot_start_keeps_the_job_pending_with_a_reason(make_job, reason, hint):
    pods = [pod(0, phase="Pending", reason=reason, message="details"), pod(1, phase="Pending")]
    d = decide(with_status(make_job(nodes=2), {"phase": "Pending", "attempt": 1}), pods, NOW)
    running = cond(d, "Running")
    assert d.status["phase"] == "Pending"
    assert (running["status"], running["reason"]) == ("False", reason)
    assert hint in running["message"] and "demo-0" in running["message"]
    assert [(e.type, e.reason) for e in d.events][-1] == ("Warning", reason)


def test_a_gang_gated_by_kueue_waits_for_admission_as_a_whole(make_job):
    job = make_job(nodes=2, scheduling={"queue": "team-a"})
    pods = [pod(r, phase="Pending", gates=("kueue.x-k8s.io/admission",)) for r in range(2)]
    d = decide(with_status(job, {"phase": "Pending", "attempt": 1}), pods, NOW)
    running = cond(d, "Running")
    assert (d.status["phase"], d.reason, running["status"], running["reason"]) == ("Pending", "WaitingForAdmission", "False", "WaitingForAdmission")
    assert "LocalQueue team-a" in running["message"] and "kueue.x-k8s.io/admission" in running["message"]
    assert (d.create_ranks, d.delete_pods) == ([], [])
    assert d.events == []  # waiting in a queue is no problem to warn about


def test_a_restarted_gang_that_waits_for_admission_again_says_so_in_a_normal_event(make_job):
    job = with_status(make_job(nodes=2, scheduling={"queue": "team-a"}), {"phase": "Restarting", "attempt": 2, "restarts": 1})
    pods = [pod(r, attempt=2, phase="Pending", gates=("kueue.x-k8s.io/admission",)) for r in range(2)]
    d = decide(job, pods, NOW)
    assert (d.status["phase"], d.status["attempt"]) == ("Pending", 2)
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "WaitingForAdmission")]


def test_the_same_problem_is_reported_once(make_job):
    pods = [pod(0, phase="Pending", reason="ErrImagePull", message="x"), pod(1, phase="Pending")]
    first = decide(with_status(make_job(nodes=2), {"phase": "Pending", "attempt": 1}), pods, NOW)
    again = decide(with_status(make_job(nodes=2), first.status), pods, NOW + timedelta(seconds=30))
    assert again.events == []


def test_a_blocker_keeps_the_job_pending_and_retries_later(make_job):
    blocker = Blocker("ClaimNotFound", "PersistentVolumeClaim 'ckpt' (spec.checkpoint.claimName) does not exist")
    d = decide(make_job(nodes=2), [], NOW, Timing(blocked_retry=30), blocker=blocker)
    created = cond(d, "Created")
    assert (d.status["phase"], created["status"], created["reason"]) == ("Pending", "False", "ClaimNotFound")
    assert d.create_ranks == [] and d.wake_after == 30
    assert any(e.type == "Warning" and e.reason == "ClaimNotFound" for e in d.events)


def test_a_permanent_blocker_fails_the_job(make_job):
    d = decide(make_job(nodes=2), [], NOW, blocker=Blocker("InvalidSpec", "pod demo-0 is invalid", permanent=True))
    assert (d.status["phase"], d.reason) == ("Failed", "InvalidSpec")


def test_a_spec_the_parser_refuses_fails_the_job_naming_the_field(make_job):
    d = decide(make_job(model={"type": "hf"}), [], NOW)
    assert (d.status["phase"], d.reason) == ("Failed", "InvalidSpec")
    assert "spec.model" in d.status["message"]


# ------------------------------------------------------------------ runPolicy

def test_suspend_deletes_the_pods_and_ends_the_attempt(make_job):
    job = with_status(make_job(nodes=2, runPolicy={"suspend": True}), running_status())
    d = decide(job, gang(2), NOW)
    assert (d.status["phase"], d.status["attempt"], d.status["restarts"]) == ("Suspended", 2, 0)
    assert sorted(d.delete_pods) == ["demo-0", "demo-1"]
    assert "startTime" not in d.status
    assert cond(d, "Suspended")["status"] == "True" and cond(d, "Running")["status"] == "False"


def test_a_suspended_job_stays_suspended_without_new_attempts(make_job):
    job = with_status(make_job(nodes=2, runPolicy={"suspend": True}), {"phase": "Suspended", "attempt": 2, "restarts": 0})
    d = decide(job, [pod(0, deleting=True)], NOW)
    assert (d.status["attempt"], d.delete_pods, d.create_ranks, d.events) == (2, [], [], [])


def test_resume_starts_a_new_attempt(make_job):
    job = with_status(make_job(nodes=2), {"phase": "Suspended", "attempt": 2, "restarts": 0})
    d = decide(job, [], NOW)
    assert (d.status["phase"], d.create_attempt, d.create_ranks, d.reason) == ("Pending", 2, [0, 1], "Resumed")
    assert cond(d, "Suspended") is None or cond(d, "Suspended")["status"] == "False"


def test_a_job_created_suspended_starts_at_attempt_1(make_job):
    d = decide(make_job(nodes=1, runPolicy={"suspend": True}), [], NOW)
    assert d.status["phase"] == "Suspended" and "attempt" not in d.status
    resumed = decide(with_status(make_job(nodes=1), d.status), [], NOW)
    assert (resumed.create_attempt, resumed.create_ranks) == (1, [0])


def test_the_deadline_fails_the_job_and_stops_every_pod(make_job):
    job = with_status(make_job(nodes=2, runPolicy={"activeDeadlineSeconds": 60, "cleanPodPolicy": "None"}), running_status())
    d = decide(job, gang(2), NOW)
    assert (d.status["phase"], d.reason) == ("Failed", "DeadlineExceeded")
    assert sorted(d.delete_pods) == ["demo-0", "demo-1"]


def test_before_the_deadline_the_job_wakes_up_at_it(make_job):
    job = with_status(make_job(nodes=2, runPolicy={"activeDeadlineSeconds": 900}), running_status())
    d = decide(job, gang(2), NOW, Timing(progress_interval=1000, resync=1000))
    assert d.status["phase"] == "Running" and d.wake_after == pytest.approx(600)


@pytest.mark.parametrize(
    "policy, want",
    [("Running", ["demo-1"]), ("All", ["demo-0", "demo-1"]), ("None", [])],
)
def test_clean_pod_policy_decides_which_pods_go_when_the_job_ends(make_job, policy, want):
    job = with_status(make_job(nodes=2, runPolicy={"cleanPodPolicy": policy, "restartPolicy": "Never"}), running_status())
    d = decide(job, [pod(0, **FAILED_1), pod(1)], NOW)
    assert d.status["phase"] == "Failed" and sorted(d.delete_pods) == want


def test_the_grace_period_defaults_to_the_specs_declaration(make_job):
    job = with_status(make_job(nodes=2, runPolicy={"restartPolicy": "Never"}), running_status())
    d = decide(job, [pod(0, **FAILED_1), pod(1)], NOW)
    assert d.grace_seconds == RunPolicy().terminationGracePeriodSeconds


@pytest.mark.parametrize(
    "run_policy, want_grace, want_deleted",
    [
        ({"terminationGracePeriodSeconds": 7, "cleanPodPolicy": "All"}, 7, ["demo-0", "demo-1"]),
        ({"cleanPodPolicy": "Sometimes"}, RunPolicy().terminationGracePeriodSeconds, ["demo-1"]),
    ],
    ids=["its-own-runPolicy", "runPolicy-refused-too"],
)
def test_a_refused_spec_ends_the_job_under_its_run_policy_else_the_declarations_defaults(make_job, run_policy, want_grace, want_deleted):
    job = with_status(make_job(nodes=2, model={"type": "hf"}, runPolicy=run_policy), running_status())
    d = decide(job, [pod(0, phase="Succeeded"), pod(1)], NOW)
    assert (d.status["phase"], d.reason) == ("Failed", "InvalidSpec")
    assert (d.grace_seconds, sorted(d.delete_pods)) == (want_grace, want_deleted)


@pytest.mark.parametrize(
    "finished_ago, ttl, delete, wake",
    [(100, 60, True, 0.0), (10, 60, False, 50.0), (10, None, False, 300.0)],
    ids=["expired", "not-yet", "no-ttl"],
)
def test_ttl_deletes_a_finished_job(make_job, finished_ago, ttl, delete, wake):
    done = timestamp(NOW - timedelta(seconds=finished_ago))
    job = with_status(make_job(nodes=2, runPolicy={"ttlSecondsAfterFinished": ttl}), {"phase": "Succeeded", "attempt": 1, "completionTime": done})
    d = decide(job, [], NOW)
    assert (d.delete_job, d.wake_after) == (delete, wake)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_job_never_restarts_whatever_happens_to_its_pods(make_job, phase):
    job = with_status(make_job(nodes=2), {"phase": phase, "attempt": 1, "restarts": 0, "completionTime": EARLIER})
    for pods in ([], [pod(0, **FAILED_1)], [pod(0, deleting=True)]):
        d = decide(job, pods, NOW)
        assert (d.status["phase"], d.status["attempt"], d.create_ranks, d.events) == (phase, 1, [], [])


# ------------------------------------------------------------------ progress

def test_progress_from_rank_0_lands_in_status(make_job):
    reading = TrainerReading(step=120, total_steps=1000, loss=2.34567, tokens_per_second=15234.4, eta_seconds=3725, checkpoint_step=100)
    d = decide(with_status(make_job(nodes=2), running_status()), gang(2), NOW, progress=reading)
    assert d.status["progress"] == {
        "step": 120, "totalSteps": 1000, "loss": "2.3457", "tokensPerSecond": "15234", "eta": "1h02m",
        "updateTime": timestamp(NOW), "lastAdvanceTime": timestamp(NOW),
    }
    assert d.status["checkpoint"] == {"step": 100, "path": "step00000100", "time": timestamp(NOW)}


def test_success_reports_the_last_step_and_the_final_checkpoint(make_job):
    # Rank 0's endpoint went with its process; the last reading was a step short.
    old = {"step": 29, "totalSteps": 30, "loss": "1.5000", "eta": "1s", "updateTime": EARLIER}
    job = with_status(make_job(nodes=2, training={"steps": 30}), running_status(progress=old))
    job["status"]["checkpoint"] = {"step": 20, "path": "step00000020", "time": EARLIER}
    d = decide(job, gang(2, phase="Succeeded"), NOW)
    assert d.status["progress"] == {"step": 30, "totalSteps": 30, "loss": "1.5000", "eta": "0s", "updateTime": timestamp(NOW)}
    assert d.status["checkpoint"] == {"step": 30, "path": "step00000030", "time": timestamp(NOW)}


def program_job(make_job):
    return make_job(nodes=2, data=None, program={"command": ["train.py"]})


def test_a_programs_newer_checkpoint_gives_the_budget_back_but_names_no_trainer_tag(make_job):
    status = running_status(restarts=1, consecutiveFailures=1)
    d = decide(with_status(program_job(make_job), status), gang(2), NOW, progress=TrainerReading(step=21, checkpoint_step=20))
    assert "consecutiveFailures" not in d.status
    assert d.status["checkpoint"] == {"step": 20, "time": timestamp(NOW)}


def test_a_program_that_succeeded_keeps_the_progress_last_read(make_job):
    old = {"step": 29, "loss": "1.5000", "updateTime": EARLIER}
    d = decide(with_status(program_job(make_job), running_status(progress=old)), gang(2, phase="Succeeded"), NOW)
    assert (d.status["phase"], d.status["progress"]) == ("Succeeded", old)


def test_without_a_reading_the_last_progress_stays(make_job):
    old = {"step": 5, "updateTime": EARLIER}
    d = decide(with_status(make_job(nodes=2), running_status(progress=old)), gang(2), NOW)
    assert d.status["progress"] == old


# ------------------------------------------------------------------ observed pods

def test_a_pod_is_viewed_with_its_rank_attempt_and_exit():
    body = {
        "metadata": {"name": "demo-1", "labels": {wiring.NODE_RANK_LABEL: "1", wiring.ATTEMPT_LABEL: "3"}},
        "status": {
            "phase": "Failed",
            "podIP": "10.0.0.7",
            "containerStatuses": [{"name": wiring.TRAINER_CONTAINER_NAME, "state": {"terminated": {"exitCode": 64, "reason": "Error"}}}],
        },
    }
    assert view(body) == PodView(name="demo-1", rank=1, attempt=3, phase="Failed", ip="10.0.0.7", exit_code=64, reason="Error")


def test_a_gated_pod_is_viewed_with_its_gates():
    body = {
        "metadata": {"name": "demo-0", "labels": {wiring.NODE_RANK_LABEL: "0", wiring.ATTEMPT_LABEL: "1"}},
        "spec": {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]},
    }
    assert view(body).gates == ("kueue.x-k8s.io/admission",)


def test_an_unschedulable_pod_says_why_and_since_when():
    body = {
        "metadata": {"name": "demo-0", "creationTimestamp": "2026-11-29T11:00:00Z",
                     "labels": {wiring.NODE_RANK_LABEL: "0", wiring.ATTEMPT_LABEL: "1"}},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                       "message": "0/2 nodes are available", "lastTransitionTime": "2026-11-29T11:05:00Z"}]},
    }
    seen = view(body)
    assert (seen.reason, seen.message) == ("Unschedulable", "0/2 nodes are available")
    # Elastic mode's shrink waits from here: when the scheduler first found no node, not when the pod was made.
    assert seen.unschedulable_since == "2026-11-29T11:05:00Z"


@pytest.mark.parametrize(
    "status, disrupted",
    [
        ({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]}, True),
        ({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}, True),
        ({"phase": "Failed", "reason": "Terminated", "message": "Pod was terminated in response to imminent node shutdown."}, True),
        ({"phase": "Failed", "conditions": [{"type": "TerminationTarget", "status": "True", "reason": "WorkloadEvicted"}]}, True),
        ({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "False"}]}, False),
        ({"phase": "Failed"}, False),
    ],
    ids=["preempted", "evicted", "node-shutdown", "stopped-by-kueue", "condition-false", "plain-failure"],
)
def test_a_pod_the_cluster_took_away_is_viewed_as_disrupted(status, disrupted):
    body = {"metadata": {"name": "demo-0", "labels": {wiring.NODE_RANK_LABEL: "0", wiring.ATTEMPT_LABEL: "1"}}, "status": status}
    assert view(body).disrupted is disrupted


# ------------------------------------------------------------------ resizes

def test_a_change_of_nodes_on_a_running_gang_checkpoints_it_and_starts_the_next_attempt_at_the_new_size(make_job):
    job = with_status(make_job(nodes=4), running_status(nodes=2, consecutiveFailures=1))
    d = decide(job, gang(2), NOW)
    assert (d.status["phase"], cond(d, "Restarting")["reason"]) == ("Restarting", "Resizing")
    assert (d.status["attempt"], d.status["resizes"], d.status["nodes"], d.status["restarts"]) == (2, 1, 4, 0)
    assert (cond(d, "Resized")["status"], cond(d, "Resized")["reason"]) == ("True", "Resizing")
    # Not a failure: the retry budget is as it was.
    assert d.status["consecutiveFailures"] == 1
    assert sorted(d.delete_pods) == ["demo-0", "demo-1"] and d.grace_seconds == RunPolicy().terminationGracePeriodSeconds
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "Resizing")]
    assert "from 2 to 4 nodes" in d.events[0].message

    waiting = decide(with_status(job, d.status), [pod(0, deleting=True), pod(1, deleting=True)], NOW)
    assert (waiting.status["phase"], waiting.create_attempt, waiting.delete_pods) == ("Restarting", None, [])
    started = decide(with_status(job, waiting.status), [], NOW)
    assert (started.create_attempt, started.create_ranks, started.status["resizes"]) == (2, [0, 1, 2, 3], 1)
    # The new gang starts as any gang does: the resize is not a problem to warn about again.
    assert [(e.type, e.reason) for e in started.events] == [("Normal", "CreatingPods")]


@pytest.mark.parametrize(
    "name, status, pods",
    [
        ("a gang of the size the spec asks for", running_status(nodes=2), gang(2)),
        ("a status written before sizes were recorded", running_status(), gang(2)),
        ("a new size before any pod exists", {"phase": "Pending", "attempt": 1, "nodes": 4}, []),
    ],
)
def test_no_resize_without_a_running_gang_of_another_size(make_job, name, status, pods):
    d = decide(with_status(make_job(nodes=2), status), pods, NOW)
    assert d.status.get("resizes") is None and d.status["nodes"] == 2 and d.status["selector"] == f"{wiring.JOB_LABEL}=demo", name
    assert all(e.reason != "Resizing" for e in d.events), name


def batch_program(make_job, nodes: int) -> dict[str, Any]:
    """A program whose DeepSpeed config fixes its batch: 16 sequences in micro batches of 8, which 1 or 2 ranks divide."""
    return make_job(nodes=nodes, data=None, program={"command": ["train.py"], "deepspeedConfig": {
        "train_batch_size": 16, "train_micro_batch_size_per_gpu": 8}})


def test_a_size_the_programs_batch_cannot_divide_is_refused_and_the_gang_goes_on(make_job):
    job = with_status(batch_program(make_job, nodes=4), running_status(nodes=2))
    d = decide(job, gang(2), NOW)
    assert (d.status["phase"], d.status["nodes"], d.delete_pods, d.status.get("resizes")) == ("Running", 2, [], None)
    refused = cond(d, "Resized")
    assert (refused["status"], refused["reason"]) == ("False", "ResizeRefused")
    assert "spec.program.deepspeedConfig.train_batch_size" in refused["message"] and "goes on with 2 nodes" in refused["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "ResizeRefused")]
    # Said once; and taken back when spec.nodes is the gang's size again.
    assert decide(with_status(job, d.status), gang(2), NOW).events == []
    back = decide(with_status(batch_program(make_job, nodes=2), d.status), gang(2), NOW)
    assert (cond(back, "Resized")["status"], [e.reason for e in back.events]) == ("True", ["SizeAsSpecified"])


def test_a_new_job_whose_size_the_programs_batch_cannot_divide_fails_naming_the_field(make_job):
    d = decide(batch_program(make_job, nodes=4), [], NOW)
    assert (d.status["phase"], cond(d, "Failed")["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.program.deepspeedConfig.train_batch_size" in d.status["message"]
