"""Elastic mode, end to end: real operator (under the shipped RBAC), real control plane and
kube-scheduler, the test node agent as kubelet, real DeepSpeed over gloo on the CPU, the tiny GPT
at ZeRO stage 1, 2 pods of 1 rank that must sit on different nodes (a required pod anti-affinity).

A node is lost (cordoned, its pod deleted at once): the gang is recreated, its pod for the lost
node stays Unschedulable, and after elastic.shrinkAfterSeconds the job shrinks to 1 pod, which
resumes from the last checkpoint converted to the universal format. A capacity probe waits for
the lost node; uncordoning it lets the scheduler place the probe, and the job grows back to 2
pods, which resume from the checkpoint the single rank wrote at SIGTERM, and finishes.

    .venv/bin/python -m pytest tests/e2e/test_operator_elastic_training.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from training_helpers import STEP_SECONDS, Training, of_kind, start, wait_for

from kubespeed import wiring

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Enough steps that the single rank is still training when the node comes back: the grow must
# interrupt it, so its SIGTERM checkpoint is what the grown gang resumes from.
STEPS = 300
GLOBAL_BATCH = 8
CHECKPOINT_INTERVAL = 10
SHRINK_AFTER = 5
# Bounds how long the survivor of the lost node takes to stop (its peer is gone mid-collective),
# and leaves a single rank ample time for its SIGTERM checkpoint.
GRACE_SECONDS = 30


@pytest.fixture
def cordon(training: Training) -> Iterator[Callable[[str, bool], None]]:
    """cordon(node, True/False); every node of the agent is uncordoned after the test."""
    core = training.jobs.core

    def set_unschedulable(node: str, unschedulable: bool) -> None:
        core.patch_node(node, {"spec": {"unschedulable": unschedulable}})

    yield set_unschedulable
    for node in training.agent.nodes:
        set_unschedulable(node, False)


def runs_of(lines: list[dict[str, Any]], attempt: int) -> list[dict[str, Any]]:
    """The metrics lines of one attempt, from its `start` line on (an attempt whose ranks never met has none)."""
    found: list[dict[str, Any]] = []
    current = None
    for line in lines:
        if line["kind"] == "start":
            current = line.get("attempt")
        if current == attempt:
            found.append(line)
    return found


def probes(training: Training) -> list[Any]:
    return [p for p in training.jobs.pods(training.name) if wiring.PROBE_LABEL in (p.metadata.labels or {})]


def unschedulable_probe(training: Training) -> Any:
    for probe in probes(training):
        conditions = probe.status.conditions or []
        if not probe.spec.node_name and any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions):
            return probe
    return None


def test_a_lost_node_shrinks_the_gang_which_trains_on_and_grows_back_when_the_node_returns(
    training: Training, cordon: Callable[[str, bool], None]
) -> None:
    name, jobs = training.name, training.jobs
    one_per_node = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {wiring.JOB_LABEL: name}}, "topologyKey": "kubernetes.io/hostname"}]}}  # fmt: skip
    start(training, steps=STEPS, checkpoint_interval=CHECKPOINT_INTERVAL, grace_seconds=GRACE_SECONDS,
          elastic={"minNodes": 1, "maxNodes": 2, "shrinkAfterSeconds": SHRINK_AFTER}, scheduling__affinity=one_per_node)  # fmt: skip
    wait_for(lambda: of_kind(training.metrics(), "checkpoint"), "a first checkpoint", STEP_SECONDS, explain=training.explain)

    # The node of rank 1 is lost: nothing more is scheduled there, and its pod is gone at once.
    lost = jobs.core.read_namespaced_pod(wiring.pod_name(name, 1), jobs.namespace).spec.node_name
    cordon(lost, True)
    jobs.core.delete_namespaced_pod(wiring.pod_name(name, 1), jobs.namespace, grace_period_seconds=0)

    shrunk = wait_for(lambda: jobs.status(name).get("elastic") and jobs.status(name), "the gang to shrink", STEP_SECONDS,
                      explain=training.explain)  # fmt: skip
    assert (shrunk["nodes"], shrunk["elastic"]["nodes"], shrunk["elastic"]["specNodes"], jobs.get(name)["spec"]["nodes"]) == (1, 1, 2, 2)
    single = shrunk["attempt"]
    # The single rank trains, and a probe waits for the node the gang lacks, which the scheduler cannot place.
    wait_for(lambda: of_kind(runs_of(training.metrics(), single), "train"), "the single rank to train", STEP_SECONDS,
             explain=training.explain)  # fmt: skip
    probe = wait_for(lambda: unschedulable_probe(training), "a capacity probe the scheduler cannot place", STEP_SECONDS,
                     explain=training.explain)  # fmt: skip
    assert probe.metadata.name == wiring.probe_name(name, 0)

    cordon(lost, False)
    status = training.wait_phase("Succeeded")
    wait_for(lambda: not probes(training), "no capacity probe left", STEP_SECONDS, explain=training.explain)

    # Two resizes and one disruption (the lost pod); no failure, and the gang ends at spec.nodes.
    assert (status["nodes"], status["resizes"], status["restarts"], status["disruptions"], status["attempt"]) == (2, 2, 1, 1, single + 1)
    assert "elastic" not in status and "consecutiveFailures" not in status
    elastic_events = [(kind, reason, message) for kind, reason, message in jobs.events(name) if reason.startswith("Elastic")]
    assert [(kind, reason) for kind, reason, _ in elastic_events] == [("Warning", "ElasticShrink"), ("Normal", "ElasticGrow")]
    assert "from 2 to 1 nodes" in elastic_events[0][2]
    assert "from 1 to 2 nodes" in elastic_events[1][2] and f"(on {lost})" in elastic_events[1][2]

    lines = training.metrics()
    before_shrink = [line for line in lines[: lines.index(runs_of(lines, single)[0])] if line["kind"] == "checkpoint"]
    shrunk_run, grown_run = runs_of(lines, single), runs_of(lines, single + 1)
    # The single rank resumes from the last complete checkpoint of the 2 ranks, converted to the universal format.
    assert [(s["worldSize"], s["gradientAccumulation"]) for s in of_kind(shrunk_run, "start")] == [(1, 4)]
    (resume,) = of_kind(shrunk_run, "resume")
    assert (resume["step"], resume["dataParallelSize"], resume["resizedFrom"]) == (before_shrink[-1]["step"], 1, 2)
    # The grown gang resumes from the checkpoint the single rank wrote at SIGTERM, after its last step: nothing redone.
    assert [(s["worldSize"], s["gradientAccumulation"]) for s in of_kind(grown_run, "start")] == [(2, 2)]
    (regrown,) = of_kind(grown_run, "resume")
    last_single = of_kind(shrunk_run, "train")[-1]["step"]
    assert (regrown["step"], regrown["dataParallelSize"], regrown["resizedFrom"]) == (last_single, 2, 1)
    assert of_kind(shrunk_run, "checkpoint")[-1]["step"] == last_single < STEPS

    # Each run trains on from where it resumed, and every step draws the global batch that follows the
    # last one's: no sample seen twice or skipped within a run or across the resizes.
    for run in (shrunk_run, grown_run):
        steps = [line["step"] for line in of_kind(run, "train")]
        assert steps == list(range(of_kind(run, "resume")[0]["step"] + 1, steps[-1] + 1))
    trained = of_kind(lines, "train")
    assert all(line["samplesDrawn"] == GLOBAL_BATCH * line["step"] for line in trained)
    assert sorted({line["step"] for line in trained}) == list(range(1, STEPS + 1))
