"""Pod status as the kubelet writes it: phase, conditions, container states, restarts.

Plain functions from what the agent observed to the `status` object it merge-patches.
Conditions the kubelet does not own (PodScheduled, DisruptionTarget) are carried over,
and a condition keeps its lastTransitionTime while its status stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def running(started_at: str) -> dict[str, Any]:
    return {"running": {"startedAt": started_at}}


def terminated(exit_code: int, started_at: str, finished_at: str, container_id: str, reason: str = "",
               message: str = "") -> dict[str, Any]:  # fmt: skip
    """Completed for 0, Error otherwise, as containerd reports; StartError when exec failed."""
    state: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": finished_at,
        "containerID": container_id,
    }
    if exit_code > 128:
        state["signal"] = exit_code - 128
    if message:
        state["message"] = message
    return {"terminated": state}


@dataclass
class ContainerStatus:
    name: str
    image: str
    state: dict[str, Any] = field(default_factory=lambda: waiting("ContainerCreating"))
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    container_id: str = ""

    @property
    def is_running(self) -> bool:
        return "running" in self.state

    @property
    def exit_code(self) -> int | None:
        return self.state["terminated"]["exitCode"] if "terminated" in self.state else None

    def to_api(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": f"kubespeed-agent://{self.image}" if self.container_id else "",
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.is_running,
            "started": self.is_running,
            "restartCount": self.restart_count,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def condition(kind: str, true: bool, reason: str, existing: dict[str, dict[str, Any]]) -> dict[str, Any]:
    status = "True" if true else "False"
    previous = existing.get(kind)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == status else now()
    result = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
    if reason:
        result["reason"] = reason
    return result


def pod_status(
    current: dict[str, Any],
    phase: str,
    sandbox_ready: bool,
    init_statuses: list[ContainerStatus],
    statuses: list[ContainerStatus],
    host_ip: str,
    pod_ip: str,
    start_time: str,
) -> dict[str, Any]:
    """The pod's whole status; `current` is the status the API server holds now."""
    existing = {c["type"]: c for c in current.get("conditions") or []}
    initialized = all(s.exit_code == 0 for s in init_statuses)
    ready = phase == "Running" and all(s.is_running for s in statuses)
    done = phase in ("Succeeded", "Failed")
    not_ready_reason = "PodCompleted" if done else "ContainersNotReady"
    conditions = [c for kind, c in existing.items() if kind not in KUBELET_CONDITIONS]
    conditions += [
        condition("PodReadyToStartContainers", sandbox_ready, "", existing),
        condition("Initialized", initialized, "" if initialized else "ContainersNotInitialized", existing),
        condition("ContainersReady", ready, "" if ready else not_ready_reason, existing),
        condition("Ready", ready, "" if ready else not_ready_reason, existing),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": [s.to_api() for s in statuses],
    }
    if init_statuses:
        status["initContainerStatuses"] = [s.to_api() for s in init_statuses]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status
