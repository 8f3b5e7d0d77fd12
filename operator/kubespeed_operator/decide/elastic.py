"""Elastic mode (spec.elastic): shrink a gang that cannot be whole, grow it back when capacity returns.

- Shrink. When pods of the current attempt stay Pending Unschedulable (a node lost,
  cordoned or full) for elastic.shrinkAfterSeconds, the gang is resized to the pods that
  can run: the largest size up to their number that the spec's own rules accept (within
  minNodes, the global batch divisible), found by parsing the spec at each size, so the
  rules are evaluated, not re-typed. Below minNodes nothing shrinks, and the startup
  timeout releases the gang as without elastic mode.
- The choice is `status.elastic` ({nodes, specNodes, message}); spec.nodes stays as the
  user wrote it, so GitOps has nothing to undo. It holds while spec.elastic is set and
  spec.nodes is still `specNodes`: a resize by the user or removing spec.elastic ends it.
- Grow. While the shrunk gang runs, capacity probes stand in for the missing pods: pods
  with a worker's scheduling constraints that do nothing (build.probes). The real
  scheduler placing one means a worker fits; the gang then grows to as many pods as the
  placed probes allow (up to spec.nodes, by the same rules). Probes exist only while a
  decision asks for them (`Decision.probes`), so every other path deletes them.

Both are resizes (status.resizes, the Resized condition, one Event each), never failures.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubespeed.spec import LMTrainingJobSpec, SpecError, parse_job_spec
from kubespeed.spec.status import Reason
from kubespeed_operator.decide.observed import PodReason, PodView, ProbeView
from kubespeed_operator.decide.resize import Resize
from kubespeed_operator.decide.status import NORMAL, WARNING, parse_time


def _raw(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("spec") or {}


def effective_spec(job: dict[str, Any], spec: LMTrainingJobSpec) -> LMTrainingJobSpec:
    """The spec at the size the gang should have: status.elastic.nodes while elastic mode's choice holds."""
    state = (job.get("status") or {}).get("elastic") or {}
    if spec.elastic is None or not state or state.get("specNodes") != _raw(job).get("nodes", spec.nodes):
        return spec
    if state.get("nodes") == spec.nodes:
        return spec
    try:
        return parse_job_spec({**_raw(job), "nodes": state["nodes"]})
    except (SpecError, KeyError):
        # The spec no longer allows that size (minNodes raised): the gang goes back to spec.nodes.
        return spec


def choice(job: dict[str, Any], spec: LMTrainingJobSpec) -> dict[str, Any] | None:
    """`status.elastic` when it holds for `spec` (the effective spec); None when the gang follows spec.nodes."""
    state = (job.get("status") or {}).get("elastic")
    if not state or spec.elastic is None or state.get("nodes") != spec.nodes or state.get("nodes") == _raw(job).get("nodes"):
        return None
    return state


def _largest(job: dict[str, Any], upto: int, lowest: int) -> tuple[int, list[str]] | None:
    """The largest size from `upto` down to `lowest` the spec accepts, and why each larger one was refused."""
    refused = []
    for nodes in range(upto, lowest - 1, -1):
        try:
            parse_job_spec({**_raw(job), "nodes": nodes})
        except SpecError as err:
            refused.append(f"{nodes} ({err})")
            continue
        return nodes, refused
    return None


def _how_chosen(nodes: int, upto: int, refused: list[str]) -> str:
    if not refused:
        return f"{nodes} is the largest size up to {upto} that elastic.minNodes and the global batch allow"
    return f"{nodes} is the largest size up to {upto} the spec accepts; refused: {'; '.join(refused)}"


def shrink(job: dict[str, Any], spec: LMTrainingJobSpec, current: list[PodView], now: datetime) -> tuple[Resize | None, float | None]:
    """A shrink due now; else None and the seconds until one may be due (None: none coming)."""
    elastic = spec.elastic
    if elastic is None:
        return None, None
    live = [p for p in current if not p.deleting]
    stuck = [p for p in live if not p.started and p.reason == PodReason.UNSCHEDULABLE]
    can_run = len(live) - len(stuck)
    if not stuck or can_run < elastic.minNodes:
        return None, None
    # The wait counts from when the scheduler first found no node for a pod (PodScheduled=False's
    # lastTransitionTime, kept as it retries), not from the pod's creation: a pod the scheduler has not
    # judged yet (busy, restarting) says nothing about capacity. One gap: a pod that waited behind
    # scheduling gates keeps the time its gates set PodScheduled=False (reason SchedulingGated), as the
    # scheduler's UpdatePodCondition keeps lastTransitionTime while the status stays False.
    since = [t for t in (parse_time(p.unschedulable_since) for p in stuck) if t is not None]
    if not since:
        return None, None
    waited = (now - min(since)).total_seconds()
    if waited < elastic.shrinkAfterSeconds:
        return None, elastic.shrinkAfterSeconds - waited
    found = _largest(job, can_run, elastic.minNodes)
    if found is None or found[0] >= spec.nodes:
        return None, None
    nodes, refused = found
    names = ", ".join(f"{p.name} ({p.message or p.reason})" for p in stuck)
    message = (f"elastic: shrinking from {spec.nodes} to {nodes} nodes: {len(stuck)} pod(s) could not be scheduled for "
               f"{waited:.0f}s (elastic.shrinkAfterSeconds is {elastic.shrinkAfterSeconds}s): {names}; {can_run} can run, and "
               f"{_how_chosen(nodes, can_run, refused)}. The ranks checkpoint at SIGTERM and {nodes} resume from it; capacity "
               f"probes wait for the missing nodes, and the job grows back to spec.nodes ({_raw(job).get('nodes', spec.nodes)}) "
               f"when the scheduler places them")
    state = {"nodes": nodes, "specNodes": _raw(job).get("nodes", spec.nodes), "message": message}
    # A Warning: the job runs smaller than asked because the cluster lost capacity.
    return Resize(nodes, Reason.ELASTIC_SHRINK, message, WARNING, state), None


def probes_wanted(state: dict[str, Any] | None) -> int:
    """Capacity probes to keep pending: one per pod the shrunk gang lacks."""
    return 0 if state is None else max(int(state["specNodes"]) - int(state["nodes"]), 0)


def grow(job: dict[str, Any], state: dict[str, Any], probes: list[ProbeView]) -> Resize | None:
    """A grow due now: the scheduler placed probes, so that many more workers fit."""
    placed = [p for p in probes if p.node and not p.deleting]
    if not placed:
        return None
    size, wanted = int(state["nodes"]), int(state["specNodes"])
    upto = min(size + len(placed), wanted)
    found = _largest(job, upto, size + 1)
    if found is None:
        # The placed probes keep their nodes while more are awaited for a size the batch divides.
        return None
    nodes, refused = found
    where = ", ".join(sorted({p.node or "" for p in placed}))
    message = (f"elastic: growing from {size} to {nodes} nodes: the scheduler placed {len(placed)} capacity probe(s) (on {where}), "
               f"so {upto} nodes can run, and {_how_chosen(nodes, upto, refused)}. The ranks checkpoint at SIGTERM and "
               f"{nodes} resume from it")
    back = None if nodes == wanted else {"nodes": nodes, "specNodes": wanted, "message": message}
    return Resize(nodes, Reason.ELASTIC_GROW, message, NORMAL, back)
