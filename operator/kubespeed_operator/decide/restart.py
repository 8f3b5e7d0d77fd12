"""When an attempt ends in failure, and whether the gang restarts or the job fails.

A failed rank is first restarted in place by the pods' launchers; a pod fails
only once they gave up (or could not help), and any pod failure ends the whole
attempt (a DeepSpeed gang cannot lose a rank and go on). Whether a new attempt
can help depends on the restart policy and the trainer's exit code
(`wiring.PERMANENT_EXIT_CODES`).

The retry budget rewards progress: `runPolicy.backoffLimit` bounds the failures
in a row with no newer complete checkpoint seen between them
(`status.consecutiveFailures`, which a newer checkpoint sets back to 0), so a
long run that keeps saving is never failed by occasional crashes, while one that
fails again and again at the same place stops.

A disruption (the cluster took a pod away: preemption, eviction, a drained or
lost node, the trainer's SIGTERM exit after its checkpoint) restarts the gang
without counting against backoffLimit, as a batch Job's podFailurePolicy can
ignore DisruptionTarget: a job on preemptible capacity is not failed by being
preempted four times. activeDeadlineSeconds still bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubespeed import wiring
from kubespeed.spec.job import RunPolicy
from kubespeed.spec.status import Reason
from kubespeed_operator.decide.observed import PodPhase, PodReason, PodView

# Reasons named after the trainer's telling exit codes; another permanent code is `PermanentExitCode`.
EXIT_REASONS = {
    wiring.EXIT_CONFIG_ERROR.code: Reason.CONFIG_ERROR,
    wiring.EXIT_DATA_ERROR.code: Reason.DATA_ERROR,
    wiring.EXIT_NO_GPU.code: Reason.NO_GPU_VISIBLE,
    wiring.EXIT_IN_PLACE_FAILED.code: Reason.IN_PLACE_RECOVERY_FAILED,
}
EXIT_MEANINGS = {e.code: e.meaning for e in wiring.EXIT_CODES}
# How much of the failing rank's own line (the container's termination message) a message quotes.
REASON_MAX_CHARS = 500
NO_GPU_HINT = (
    "the first attempt saw no GPU, so a retry would not either: if the GPU nodes' default container runtime "
    "is not NVIDIA's, set spec.runtimeClassName (e.g. nvidia) or the chart's trainer.runtimeClassName; "
    "else check the nodes' NVIDIA driver and device plugin"
)

# Waiting reasons of a container that no retry can fix: the image reference is malformed,
# or pulling is forbidden (imagePullPolicy Never) and the image is not on the node.
HOPELESS_WAITING = {
    PodReason.INVALID_IMAGE_NAME: "the image reference is not valid; fix spec.image",
    PodReason.ERR_IMAGE_NEVER_PULL: "imagePullPolicy is Never and the image is not on the node; fix spec.image or spec.imagePullPolicy",
}


@dataclass(frozen=True)
class Failure:
    """The first sign that an attempt cannot go on: a pod's (`pod`), or the whole gang's (`pod` empty)."""

    pod: str
    reason: str
    detail: str
    exit_code: int | None = None
    retryable: bool = True
    disruption: bool = False

    def describe(self) -> str:
        return f"pod {self.pod} {self.detail}" if self.pod else self.detail


@dataclass(frozen=True)
class Verdict:
    restart: bool
    reason: str
    message: str


def reason_line(message: str | None) -> str | None:
    """The last non-empty line of a container's termination message, shortened: the launcher writes
    one line; a message that fell back to the log's tail has many, and the last says most."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return None
    line = lines[-1]
    return line if len(line) <= REASON_MAX_CHARS else line[: REASON_MAX_CHARS - 3] + "..."


def _pod_failure(pod: PodView) -> Failure:
    if pod.exit_code is not None:
        meaning = EXIT_MEANINGS.get(pod.exit_code) or (pod.reason or "failed")
        why = reason_line(pod.message)
        detail = f"exited with code {pod.exit_code}: {why}" if why else f"exited with code {pod.exit_code} ({meaning})"
        permanent = pod.exit_code in wiring.PERMANENT_EXIT_CODES
        disruption = pod.disrupted or pod.exit_code == wiring.EXIT_PREEMPTED.code
        reason = (EXIT_REASONS.get(pod.exit_code, Reason.PERMANENT_EXIT_CODE) if permanent
                  else Reason.POD_DISRUPTED if disruption else EXIT_REASONS.get(pod.exit_code, Reason.POD_FAILED))
        return Failure(pod.name, reason, detail, pod.exit_code, retryable=not permanent, disruption=disruption and not permanent)
    # Failed with no container exit: evicted, node lost, or the pod's own deadline.
    why = pod.reason or PodPhase.FAILED
    detail = f"failed ({why}{': ' + pod.message if pod.message else ''})"
    return Failure(pod.name, Reason.POD_DISRUPTED if pod.disrupted else Reason.POD_FAILED, detail, disruption=pod.disrupted)


def attempt_failure(pods: list[PodView], nodes: int, job: str) -> Failure | None:
    """Why the attempt whose pods these are cannot go on, or None while it can.

    `pods` are the attempt's pods; a rank that is missing or being deleted by
    someone else (preemption, a drained node) after the gang started counts as
    failed, since the other ranks cannot continue without it.
    """
    by_rank = sorted(pods, key=lambda p: p.rank)
    for pod in by_rank:
        if pod.phase == PodPhase.FAILED:
            return _pod_failure(pod)
    for pod in by_rank:
        if pod.reason in HOPELESS_WAITING and not pod.started:
            message = f"cannot start: {pod.reason}: {HOPELESS_WAITING[pod.reason]}"
            return Failure(pod.name, Reason.IMAGE_PULL_FAILED, message, retryable=False)
    if not any(p.started for p in pods):
        return None
    for pod in by_rank:
        if pod.deleting and not pod.finished:
            return Failure(pod.name, Reason.POD_DELETED, "was deleted while the gang was training", disruption=True)
    present = {p.rank for p in pods}
    for rank in range(nodes):
        if rank not in present:
            return Failure(wiring.pod_name(job, rank), Reason.POD_DELETED, "disappeared while the gang was training", disruption=True)
    return None


def verdict(failure: Failure, policy: RunPolicy, failures: int, attempt: int) -> Verdict:
    """Restart the gang as the next attempt, or fail the job, and why (for the condition and the Event).

    `failures`: the failures in a row before this one with no newer complete checkpoint seen (status.consecutiveFailures).
    """
    what = failure.describe()
    if policy.restartPolicy == "Never":
        return Verdict(False, failure.reason if not failure.retryable else Reason.POD_FAILED, f"{what}; runPolicy.restartPolicy is Never")
    if not failure.retryable and (policy.restartPolicy == "ExitCode" or failure.exit_code is None):
        return Verdict(False, failure.reason, f"{what}; a retry cannot help, so the job fails without restarting")
    if failure.reason == Reason.NO_GPU_VISIBLE and attempt == 1:
        return Verdict(False, failure.reason, f"{what}; {NO_GPU_HINT}")
    if failure.disruption:
        return Verdict(True, failure.reason, f"{what}; restarting the gang as attempt {attempt + 1} (a disruption: not counted against runPolicy.backoffLimit)")
    if failures >= policy.backoffLimit:
        return Verdict(
            False,
            Reason.BACKOFF_LIMIT_EXCEEDED,
            f"{what}; {failures + 1} failures in a row with no newer complete checkpoint between them, "
            f"runPolicy.backoffLimit is {policy.backoffLimit}",
        )
    return Verdict(
        True,
        failure.reason,
        f"{what}; restarting the gang as attempt {attempt + 1} (failure {failures + 1} in a row without a newer "
        f"checkpoint; runPolicy.backoffLimit is {policy.backoffLimit})",
    )
