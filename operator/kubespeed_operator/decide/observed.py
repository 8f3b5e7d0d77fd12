"""What the operator observes of a training pod, reduced to the facts its decisions use.

The pod watch keeps one `PodView` per pod (not the whole object), so the
operator's memory stays small with thousands of pods, and the decision tables
in the tests build views directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubespeed import wiring


class PodPhase:
    """Kubernetes' pod phases."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class PodCondition:
    """Kubernetes' pod condition types that the decisions read."""

    POD_SCHEDULED = "PodScheduled"
    READY = "Ready"
    # Preemption and API evictions: the cluster is about to take the pod away.
    DISRUPTION_TARGET = "DisruptionTarget"
    # Kueue's mark on a pod it stops because its workload was evicted (preempted, quota withdrawn).
    TERMINATION_TARGET = "TerminationTarget"


DISRUPTION_CONDITIONS = frozenset({PodCondition.DISRUPTION_TARGET, PodCondition.TERMINATION_TARGET})


class PodReason:
    """Kubernetes' reasons for a pod that cannot start or has ended, as `PodView.reason` carries them."""

    UNSCHEDULABLE = "Unschedulable"
    # Container waiting reasons of a normal start.
    CONTAINER_CREATING = "ContainerCreating"
    POD_INITIALIZING = "PodInitializing"
    # Container waiting reasons of an image that cannot be pulled.
    ERR_IMAGE_PULL = "ErrImagePull"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    INVALID_IMAGE_NAME = "InvalidImageName"
    ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
    # Pod reasons of an end the pod did not cause: the kubelet evicted it (node pressure) or the node shut down.
    EVICTED = "Evicted"
    TERMINATED = "Terminated"
    SHUTDOWN = "Shutdown"
    NODE_SHUTDOWN = "NodeShutdown"


DISRUPTION_REASONS = frozenset({PodReason.EVICTED, PodReason.TERMINATED, PodReason.SHUTDOWN, PodReason.NODE_SHUTDOWN})


@dataclass(frozen=True)
class PodView:
    name: str
    rank: int
    attempt: int
    phase: str = PodPhase.PENDING
    deleting: bool = False
    ip: str | None = None
    ready: bool = False
    created: str | None = None
    # The trainer container's exit, when it has terminated.
    exit_code: int | None = None
    # Why it ended or cannot start: pod reason (Evicted), terminated reason
    # (OOMKilled, Error), waiting reason (ErrImagePull), or Unschedulable.
    reason: str | None = None
    message: str | None = None
    # Taken away by the cluster (preempted, evicted, node drained or shut down), not failed by itself.
    disrupted: bool = False
    # The UID of its controller (the job that made it); a pod is a job's only if this is the job's UID.
    owner: str | None = None
    uid: str | None = None
    # Scheduling gates still on the pod (Kueue's until it admits the gang): no scheduler may place it yet.
    gates: tuple[str, ...] = ()
    # When the scheduler first found no node for it (PodScheduled=False's lastTransitionTime): when capacity went missing.
    unschedulable_since: str | None = None
    # The resourceVersion it was read at; a new version alone is no news to the decisions.
    version: str | None = field(default=None, compare=False)

    @property
    def finished(self) -> bool:
        return self.phase in (PodPhase.SUCCEEDED, PodPhase.FAILED)

    @property
    def started(self) -> bool:
        """The pod's containers ran (or ran and ended): its gang has begun to train."""
        return self.phase in (PodPhase.RUNNING, PodPhase.SUCCEEDED, PodPhase.FAILED)


@dataclass(frozen=True)
class ProbeView:
    """An elastic job's capacity probe: a pod that only waits for the scheduler to place it."""

    name: str
    index: int
    # The node the scheduler bound it to: a worker of the gang would fit there.
    node: str | None = None
    deleting: bool = False
    owner: str | None = None
    uid: str | None = None


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == wiring.TRAINER_CONTAINER_NAME:
            return status
    return statuses[0] if statuses else {}


def _unschedulable(status: dict[str, Any]) -> dict[str, Any] | None:
    """The PodScheduled=False condition the scheduler writes when it finds no node for the pod."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == PodCondition.POD_SCHEDULED and cond.get("status") == "False" and cond.get("reason") == PodReason.UNSCHEDULABLE:
            return cond
    return None


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The UID of the object's controller (the owner reference marked controller), if it has one."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def view(pod: dict[str, Any]) -> PodView | None:
    """The view of a training pod; None for a pod without kubespeed's rank and attempt labels."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        rank = int(labels[wiring.NODE_RANK_LABEL])
        attempt = int(labels[wiring.ATTEMPT_LABEL])
    except (KeyError, ValueError):
        return None
    status = pod.get("status") or {}
    container = _trainer_status(pod)
    state = container.get("state") or {}
    terminated = state.get("terminated") or {}
    waiting = state.get("waiting") or {}
    exit_code = terminated.get("exitCode")
    reason = status.get("reason") or terminated.get("reason") or waiting.get("reason")
    message = status.get("message") or terminated.get("message") or waiting.get("message")
    unschedulable = _unschedulable(status)
    if reason is None and unschedulable is not None:
        reason, message = PodReason.UNSCHEDULABLE, unschedulable.get("message") or "no node fits the pod"
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == PodCondition.READY and c.get("status") == "True" for c in conditions)
    disrupted = status.get("reason") in DISRUPTION_REASONS or any(
        c.get("type") in DISRUPTION_CONDITIONS and c.get("status") == "True" for c in conditions
    )
    return PodView(
        name=meta.get("name", ""),
        rank=rank,
        attempt=attempt,
        phase=status.get("phase") or PodPhase.PENDING,
        deleting=meta.get("deletionTimestamp") is not None,
        ip=status.get("podIP"),
        ready=ready,
        created=meta.get("creationTimestamp"),
        exit_code=exit_code,
        reason=reason,
        message=message,
        disrupted=disrupted,
        owner=controller_uid(pod),
        uid=meta.get("uid"),
        gates=tuple(g.get("name", "") for g in (pod.get("spec") or {}).get("schedulingGates") or []),
        unschedulable_since=(unschedulable or {}).get("lastTransitionTime"),
        version=meta.get("resourceVersion"),
    )


def needs_prompt_look(now: PodView | ProbeView | None) -> bool:
    """Whether a pod's change may end its attempt: the pod is gone, being deleted, ended, or taken
    by the cluster. Any other change (it came, started, became ready or not, waits, cannot be
    placed; a probe was placed) only tells how a start goes, and can wait to be taken with others."""
    if now is None:
        return True
    if isinstance(now, ProbeView):
        return False
    return now.finished or now.deleting or now.disrupted or now.exit_code is not None


def probe_view(pod: dict[str, Any]) -> ProbeView | None:
    """The view of a capacity probe; None for a pod without kubespeed's probe label."""
    meta = pod.get("metadata") or {}
    try:
        index = int((meta.get("labels") or {})[wiring.PROBE_LABEL])
    except (KeyError, ValueError):
        return None
    return ProbeView(
        name=meta.get("name", ""),
        index=index,
        node=(pod.get("spec") or {}).get("nodeName"),
        deleting=meta.get("deletionTimestamp") is not None,
        owner=controller_uid(pod),
        uid=meta.get("uid"),
    )
