"""Pieces of the job's status: conditions, replica counts, and the Events that mark transitions.

Everything here is computed from what was observed (the job's pods, its old
status, the clock); nothing is remembered between reconciles.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kubespeed.spec.status import CONDITION_TYPES, ConditionType, Phase, Reason
from kubespeed_operator.decide.observed import PodPhase, PodView

# The condition that is True in each phase (Pending has none of its own).
PHASE_CONDITION = {
    Phase.RUNNING: ConditionType.RUNNING,
    Phase.RESTARTING: ConditionType.RESTARTING,
    Phase.SUSPENDED: ConditionType.SUSPENDED,
    Phase.SUCCEEDED: ConditionType.SUCCEEDED,
    Phase.FAILED: ConditionType.FAILED,
}
WARNING_PHASES = (Phase.RESTARTING, Phase.FAILED)


def timestamp(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Cond:
    status: str
    reason: str
    message: str


def merge_conditions(
    old: list[dict[str, Any]], wanted: dict[str, Cond], now: datetime, generation: int | None
) -> list[dict[str, Any]]:
    """Conditions in CONDITION_TYPES order: `wanted` ones set, others kept as they were.

    lastTransitionTime moves only when a condition's status changes, as the API
    conventions ask.
    """
    by_type = {c.get("type"): c for c in old}
    result = []
    for ctype in CONDITION_TYPES:
        previous = by_type.get(ctype)
        if ctype not in wanted:
            if previous is not None:
                result.append(previous)
            continue
        want = wanted[ctype]
        changed = previous is None or previous.get("status") != want.status
        result.append(
            {
                "type": ctype,
                "status": want.status,
                "reason": want.reason,
                "message": want.message,
                "lastTransitionTime": timestamp(now) if changed else previous.get("lastTransitionTime"),
                "observedGeneration": generation,
            }
        )
    return result


def phase_conditions(old: list[dict[str, Any]], phase: str, reason: str, message: str) -> dict[str, Cond]:
    """The phase's own condition True; any other lifecycle condition that was True turns False."""
    own = PHASE_CONDITION.get(phase)
    wanted = {own: Cond("True", reason, message)} if own else {}
    for cond in old:
        ctype = cond.get("type")
        if ctype in PHASE_CONDITION.values() and ctype != own and cond.get("status") == "True":
            wanted[ctype] = Cond("False", reason, message)
    return wanted


def replicas(pods: list[PodView]) -> dict[str, int]:
    return {
        "active": sum(1 for p in pods if not p.finished),
        "ready": sum(1 for p in pods if p.phase == PodPhase.RUNNING and p.ready),
        "succeeded": sum(1 for p in pods if p.phase == PodPhase.SUCCEEDED),
        "failed": sum(1 for p in pods if p.phase == PodPhase.FAILED),
    }


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


# Kubernetes' Event types.
NORMAL, WARNING = "Normal", "Warning"


@dataclass(frozen=True)
class Event:
    type: str  # NORMAL or WARNING
    reason: str
    message: str


# Waiting in a queue is how a queued job starts, and a resize how a resized one does: not problems to warn about.
EXPECTED_REASONS = (Reason.WAITING_FOR_ADMISSION, Reason.RESIZING, Reason.ELASTIC_SHRINK, Reason.ELASTIC_GROW)


def _problem(status: dict[str, Any]) -> tuple[str, str] | None:
    """A reason the job is stuck while not failed: a False Created or Running condition."""
    for ctype in (ConditionType.CREATED, ConditionType.RUNNING):
        cond = condition(status, ctype)
        if cond and cond.get("status") == "False" and status.get("phase") == Phase.PENDING and cond.get("reason") not in EXPECTED_REASONS:
            return cond.get("reason") or "", cond.get("message") or ""
    return None


def transition_events(old: dict[str, Any], new: dict[str, Any], reason: str) -> list[Event]:
    """One Event per transition: a phase change, or a new reason the job cannot make progress."""
    events = []
    phase = new.get("phase")
    problem = _problem(new)
    fresh_problem = problem is not None and problem != _problem(old)
    if phase != old.get("phase"):
        warning = phase in WARNING_PHASES or (fresh_problem and problem[0] == reason)
        events.append(Event(WARNING if warning else NORMAL, reason or phase or "Unknown", new.get("message") or ""))
    if fresh_problem and not (events and events[0].reason == problem[0]):
        events.append(Event(WARNING, problem[0], problem[1]))
    return events


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new` (top-level fields; None removes one)."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch
