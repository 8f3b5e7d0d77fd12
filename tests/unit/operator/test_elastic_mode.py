"""Elastic mode's decisions as tables: pods that stay Unschedulable shrink the gang, placed capacity probes grow it back.

No cluster: pods are `PodView`s and probes `ProbeView`s as the pod watch would show them.
The global batch is 12 sequences in micro batches of 1, so 1, 2, 3, 4 and 6 nodes divide it and 5 does not.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kubespeed_operator.decide.lifecycle import decide
from kubespeed_operator.decide.observed import PodView, ProbeView
from kubespeed_operator.decide.status import timestamp

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
WAIT = 60
# Within runPolicy.startupTimeoutSeconds (600 s): the gang is not released for starting late.
STARTED = timestamp(NOW - timedelta(seconds=2 * WAIT))


def elastic_job(make_job, nodes: int = 4, min_nodes: int = 1, wait: int = WAIT, **spec: Any) -> dict[str, Any]:
    return make_job(nodes=nodes, training__globalBatchSize=12, training__microBatchSize=1,
                    elastic={"minNodes": min_nodes, "maxNodes": 8, "shrinkAfterSeconds": wait}, **spec)  # fmt: skip


def running(rank: int, attempt: int = 1) -> PodView:
    return PodView(name=f"demo-{rank}", rank=rank, attempt=attempt, phase="Running", ready=True, created=STARTED)


def unschedulable(rank: int, attempt: int = 1, waited: float = 2 * WAIT, created: str = STARTED) -> PodView:
    """A pod the scheduler has found no node for since `waited` seconds ago."""
    return PodView(name=f"demo-{rank}", rank=rank, attempt=attempt, created=created, reason="Unschedulable",
                   message="0/3 nodes are available: 1 node(s) were unschedulable",
                   unschedulable_since=timestamp(NOW - timedelta(seconds=waited)))  # fmt: skip


def probe(index: int, node: str | None = None, deleting: bool = False) -> ProbeView:
    return ProbeView(name=f"demo-probe-{index}", index=index, node=node, deleting=deleting)


def pending_status(attempt: int = 1, nodes: int = 4, **extra: Any) -> dict[str, Any]:
    return {"phase": "Pending", "attempt": attempt, "nodes": nodes, "startTime": STARTED, **extra}


def shrunk_status(nodes: int, spec_nodes: int = 4, attempt: int = 2, **extra: Any) -> dict[str, Any]:
    return {"phase": "Running", "attempt": attempt, "nodes": nodes, "resizes": 1, "startTime": STARTED,
            "elastic": {"nodes": nodes, "specNodes": spec_nodes, "message": "shrunk"}, **extra}  # fmt: skip


def with_status(job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {**job, "status": status}


def cond(decision: Any, ctype: str) -> dict[str, Any]:
    return next(c for c in decision.status["conditions"] if c["type"] == ctype)


# ------------------------------------------------------------------ shrinking

@pytest.mark.parametrize(
    "name, nodes, pods, want_nodes, refused",
    [
        ("one pod unschedulable: the three that can run", 4, [running(0), running(1), running(2), unschedulable(3)], 3, None),
        ("two unschedulable: the two that can run", 4, [running(0), unschedulable(1), running(2), unschedulable(3)], 2, None),
        ("five can run but the batch needs four", 6, [*(running(r) for r in range(5)), unschedulable(5)], 4, "5 (spec.training.globalBatchSize"),
    ],
)
def test_pods_unschedulable_past_the_wait_shrink_the_gang_to_the_largest_size_that_can_run(make_job, name, nodes, pods, want_nodes, refused):
    job = with_status(elastic_job(make_job, nodes=nodes), pending_status(nodes=nodes, consecutiveFailures=1))
    d = decide(job, pods, NOW)
    assert (d.status["phase"], d.status["nodes"], d.status["attempt"], d.status["resizes"]) == ("Restarting", want_nodes, 2, 1), name
    assert d.status["elastic"]["nodes"] == want_nodes and d.status["elastic"]["specNodes"] == nodes, name
    # A resize, not a failure: the retry budget and the restart count are as they were.
    assert (d.status["consecutiveFailures"], d.status["restarts"]) == (1, 0), name
    assert sorted(d.delete_pods) == sorted(p.name for p in pods), name
    resized = cond(d, "Resized")
    assert (resized["status"], resized["reason"]) == ("True", "ElasticShrink"), name
    assert f"shrinking from {nodes} to {want_nodes} nodes" in resized["message"] and "elastic.shrinkAfterSeconds is 60s" in resized["message"]
    assert (refused or "the largest size up to") in resized["message"], name
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "ElasticShrink")], name
    assert d.probes == 0


@pytest.mark.parametrize(
    "name, job_args, pods",
    [
        ("before the wait is over", {}, [running(0), running(1), running(2), unschedulable(3, waited=WAIT / 2)]),
        ("fewer can run than minNodes", {"min_nodes": 4}, [running(0), running(1), running(2), unschedulable(3)]),
        ("no pod unschedulable, one still starting", {}, [running(0), running(1), running(2),
                                                          PodView(name="demo-3", rank=3, attempt=1, created=STARTED, reason="ContainerCreating")]),
    ],
)
def test_no_shrink(make_job, name, job_args, pods):
    job = with_status(elastic_job(make_job, **job_args), pending_status())
    d = decide(job, pods, NOW)
    assert (d.status["phase"], d.status["nodes"], d.delete_pods, d.status.get("elastic")) == ("Pending", 4, [], None), name


def test_the_wait_counts_from_when_the_pod_became_unschedulable_not_from_its_creation(make_job):
    # Created two waits ago, but the scheduler found no node for it only a moment ago (its node was just lost).
    job = with_status(elastic_job(make_job), pending_status())
    d = decide(job, [running(0), running(1), running(2), unschedulable(3, waited=5, created=STARTED)], NOW)
    assert (d.status["phase"], d.status["nodes"], d.delete_pods, d.status.get("elastic")) == ("Pending", 4, [], None)
    assert d.wake_after == pytest.approx(WAIT - 5)


def test_the_job_is_looked_at_again_when_the_wait_ends(make_job):
    job = with_status(elastic_job(make_job), pending_status())
    d = decide(job, [running(0), running(1), running(2), unschedulable(3, waited=WAIT - 10)], NOW)
    assert d.wake_after == pytest.approx(10)


def test_without_elastic_an_unschedulable_pod_waits_for_the_startup_timeout(make_job):
    job = with_status(make_job(nodes=4, training__globalBatchSize=12, training__microBatchSize=1), pending_status())
    d = decide(job, [running(0), running(1), running(2), unschedulable(3)], NOW)
    assert (d.status["phase"], d.delete_pods, d.status.get("elastic")) == ("Pending", [], None)


def test_the_shrunk_gang_is_created_at_its_size_while_spec_nodes_stays_as_written(make_job):
    job = elastic_job(make_job)
    shrunk = decide(with_status(job, pending_status()), [running(0), running(1), running(2), unschedulable(3)], NOW)
    started = decide(with_status(job, shrunk.status), [], NOW)
    assert (started.create_attempt, started.create_ranks, started.status["nodes"]) == (2, [0, 1, 2], 3)
    # The new gang starts as any gang does: the shrink is not a problem to warn about again.
    assert [(e.type, e.reason) for e in started.events] == [("Normal", "CreatingPods")]
    assert job["spec"]["nodes"] == 4 and started.status["elastic"]["specNodes"] == 4


# ------------------------------------------------------------------ capacity probes and growing back

def test_a_shrunk_gang_that_runs_keeps_a_probe_pending_for_each_missing_node(make_job):
    job = with_status(elastic_job(make_job), shrunk_status(2))
    d = decide(job, [running(0, 2), running(1, 2)], NOW, probes=[probe(0), probe(1)])
    assert (d.status["phase"], d.status["nodes"], d.probes, d.delete_pods) == ("Running", 2, 2, [])
    assert d.status["elastic"]["nodes"] == 2


@pytest.mark.parametrize(
    "name, size, probes, want_nodes, still_elastic",
    [
        ("every missing node placed: back to spec.nodes", 2, [probe(0, "node-a"), probe(1, "node-b")], 4, False),
        ("one of two placed: as many as fit", 2, [probe(0, "node-a"), probe(1)], 3, True),
        ("a size the batch refuses is skipped for the next it divides", 4, [probe(0, "node-a"), probe(1, "node-b")], 6, False),
    ],
)
def test_placed_probes_grow_the_gang_back(make_job, name, size, probes, want_nodes, still_elastic):
    spec_nodes = 6 if size == 4 else 4
    job = with_status(elastic_job(make_job, nodes=spec_nodes), shrunk_status(size, spec_nodes, consecutiveFailures=2))
    d = decide(job, [running(r, 2) for r in range(size)], NOW, probes=probes)
    assert (d.status["phase"], d.status["nodes"], d.status["attempt"], d.status["resizes"]) == ("Restarting", want_nodes, 3, 2), name
    assert ("elastic" in d.status) == still_elastic, name
    assert d.status["consecutiveFailures"] == 2 and d.status["restarts"] == 0
    assert (d.probes, sorted(d.delete_pods)) == (0, [f"demo-{r}" for r in range(size)]), name
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "ElasticGrow")], name
    assert f"growing from {size} to {want_nodes} nodes" in cond(d, "Resized")["message"], name


def test_one_placed_probe_waits_for_another_when_the_batch_refuses_one_more_node(make_job):
    job = with_status(elastic_job(make_job, nodes=6), shrunk_status(4, 6))
    d = decide(job, [running(r, 2) for r in range(4)], NOW, probes=[probe(0, "node-a"), probe(1)])
    assert (d.status["phase"], d.status["nodes"], d.probes, d.delete_pods) == ("Running", 4, 2, [])


@pytest.mark.parametrize(
    "name, spec_changes, status_changes, pods, choice_kept",
    [
        ("the user resized: spec.nodes wins", {"nodes": 6}, {}, [running(0, 2), running(1, 2)], False),
        ("spec.elastic removed: back to spec.nodes", {"elastic": None}, {}, [running(0, 2), running(1, 2)], False),
        ("suspended: a resumed job tries spec.nodes", {"runPolicy": {"suspend": True}}, {}, [running(0, 2), running(1, 2)], False),
        ("finished at the shrunk size", {}, {"phase": "Succeeded", "completionTime": STARTED}, [running(0, 2), running(1, 2)], True),
        ("the shrunk gang still starting", {}, {"phase": "Pending"},
         [running(0, 2), PodView(name="demo-1", rank=1, attempt=2, created=STARTED)], True),
    ],
)
def test_no_probe_is_kept_on_any_other_path(make_job, name, spec_changes, status_changes, pods, choice_kept):
    job = elastic_job(make_job)
    job = {**job, "spec": {k: v for k, v in {**job["spec"], **spec_changes}.items() if v is not None}}
    d = decide(with_status(job, shrunk_status(2, **status_changes)), pods, NOW, probes=[probe(0, "node-a"), probe(1)])
    assert d.probes == 0, name
    assert ("elastic" in d.status) == choice_kept, name
