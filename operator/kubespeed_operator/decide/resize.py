"""A new spec.nodes that the running job cannot take: refused, and the gang goes on at its size.

The API server's rules refuse most sizes a job cannot run at (the built-in trainer's
batch arithmetic, the elastic bounds). What they cannot see is a program's own DeepSpeed
config (`program.deepspeedConfig` with whole-number batch sizes, judged in Python): a
size that config cannot divide makes the spec unparsable. A job that was running would
then fail as InvalidSpec; instead, when the spec parses at the size the gang has
(status.nodes), the job goes on at that size and its Resized condition says why the new
one was refused, until spec.nodes is changed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubespeed.spec import LMTrainingJobSpec, SpecError, parse_job_spec
from kubespeed.spec.status import ConditionType, Reason
from kubespeed_operator.decide.status import NORMAL, WARNING, Cond, Event, condition


@dataclass(frozen=True)
class Resize:
    """A gang replaced by one of another size: the size, why (the status, the Resized condition and the
    Event say it), and the `status.elastic` that holds after it (None: the gang follows spec.nodes)."""

    nodes: int
    reason: str
    message: str
    event_type: str = NORMAL
    elastic: dict[str, Any] | None = None


def as_specified(size: int, nodes: int, attempt: int) -> Resize:
    """spec.nodes changed (or elastic mode's choice ended): the gang goes from `size` to `nodes`."""
    message = (f"resizing from {size} to {nodes} nodes: the ranks of attempt {attempt} write a checkpoint at SIGTERM, and "
               f"attempt {attempt + 1} resumes from it with {nodes} nodes")
    return Resize(nodes, Reason.RESIZING, message)


def parse_keeping_size(job: dict[str, Any]) -> LMTrainingJobSpec:
    """The job's spec; at the running size (status.nodes) when only the new spec.nodes is refused.

    Raises the refusal of the spec as written when the running size does not save it.
    """
    raw = job.get("spec") or {}
    try:
        return parse_job_spec(raw)
    except SpecError as refusal:
        size = (job.get("status") or {}).get("nodes")
        if not size or size == raw.get("nodes"):
            raise
        try:
            return parse_job_spec({**raw, "nodes": size})
        except SpecError:
            raise refusal from None


def refusal(job: dict[str, Any], spec: LMTrainingJobSpec) -> str | None:
    """Why spec.nodes is refused, when `spec` is the job's at the running size instead; else None."""
    wanted = (job.get("spec") or {}).get("nodes", spec.nodes)
    if wanted == spec.nodes:
        return None
    try:
        parse_job_spec(job.get("spec") or {})
    except SpecError as err:
        return f"spec.nodes {wanted} is refused ({err}); the job goes on with {spec.nodes} nodes"
    return None


def resized_condition(old: dict[str, Any], refused: str | None) -> tuple[dict[str, Cond], list[Event]]:
    """The Resized condition, and a Warning Event when a refusal is new."""
    before = condition(old, ConditionType.RESIZED) or {}
    if refused is not None:
        events = [] if before.get("message") == refused else [Event(WARNING, Reason.RESIZE_REFUSED, refused)]
        return {ConditionType.RESIZED: Cond("False", Reason.RESIZE_REFUSED, refused)}, events
    if before.get("status") == "False":
        message = "the gang has the size spec.nodes asks for"
        return {ConditionType.RESIZED: Cond("True", Reason.SIZE_AS_SPECIFIED, message)}, [Event(NORMAL, Reason.SIZE_AS_SPECIFIED, message)]
    return {}, []
