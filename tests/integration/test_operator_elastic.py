"""Elastic mode against the real control plane: the real kube-scheduler, two nodes of the tests' own,
the fake kubelet reporting pods.

Each pod of the gang needs a node of its own (a required pod anti-affinity on the job's label), so
a cordoned node leaves its pod Unschedulable: the gang shrinks to the one node left after
elastic.shrinkAfterSeconds, a capacity probe waits for the other, and uncordoning it lets the
scheduler place the probe, which grows the gang back to spec.nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kubernetes import client

from kubespeed import wiring
from operator_fixture import job_manifest, run_all, wait_for

pytestmark = pytest.mark.integration

POOL_LABEL = "kubespeed.io/test-pool"
POOL = "elastic"
# Keeps every other test's pods off these nodes.
POOL_TAINT = {"key": POOL_LABEL, "value": POOL, "effect": "NoSchedule"}
SHRINK_AFTER = 3


@pytest.fixture(scope="module")
def pool(control_plane: Any) -> list[str]:
    names = control_plane.add_nodes(2, gpus=8, prefix="elastic-node")
    core = client.CoreV1Api(control_plane.api_client())
    for name in names:
        taints = [t.to_dict() for t in core.read_node(name).spec.taints or []]
        core.patch_node(name, {"metadata": {"labels": {POOL_LABEL: POOL}}, "spec": {"taints": taints + [POOL_TAINT]}})
    return names


@pytest.fixture
def cordon(pool: list[str], control_plane: Any) -> Iterator[Any]:
    """cordon(node, True/False); every node of the pool is uncordoned after the test."""
    core = client.CoreV1Api(control_plane.api_client())

    def set_unschedulable(node: str, unschedulable: bool) -> None:
        core.patch_node(node, {"spec": {"unschedulable": unschedulable}})

    yield set_unschedulable
    for node in pool:
        set_unschedulable(node, False)


def elastic_job(name: str) -> dict[str, Any]:
    one_per_node = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {wiring.JOB_LABEL: name}}, "topologyKey": "kubernetes.io/hostname"}]}}  # fmt: skip
    return job_manifest(
        name,
        elastic={"minNodes": 1, "maxNodes": 2, "shrinkAfterSeconds": SHRINK_AFTER},
        runPolicy={"startupTimeoutSeconds": 120},
        scheduling={"nodeSelector": {POOL_LABEL: POOL}, "affinity": one_per_node,
                    "tolerations": [{"key": POOL_LABEL, "operator": "Equal", "value": POOL, "effect": "NoSchedule"}]},
    )  # fmt: skip


def workers(lmtj: Any, name: str, attempt: int) -> list[Any]:
    return [p for p in lmtj.pods(name) if p.metadata.labels.get(wiring.ATTEMPT_LABEL) == str(attempt) and p.metadata.deletion_timestamp is None]


def probes(lmtj: Any, name: str) -> list[Any]:
    return [p for p in lmtj.pods(name) if wiring.PROBE_LABEL in p.metadata.labels and p.metadata.deletion_timestamp is None]


def shrink_to_one(lmtj: Any, kubelet: Any, name: str, attempt: int) -> dict[str, Any]:
    """The attempt's pod that the scheduler could place runs; the other stays Unschedulable until the gang shrinks."""
    placed = wait_for(lambda: [p for p in workers(lmtj, name, attempt) if p.spec.node_name], f"a pod of attempt {attempt} placed")
    kubelet.run(lmtj.namespace, placed[0].metadata.name)
    status = wait_for(lambda: lmtj.status(name).get("elastic") and lmtj.status(name), "the gang to shrink", timeout=60)
    run_all(lmtj, kubelet, name, attempt=status["attempt"], nodes=1)
    return lmtj.status(name)


def test_a_lost_node_shrinks_the_gang_after_the_wait_and_uncordoning_it_grows_the_gang_back(lmtj, kubelet, cordon):
    lmtj.create(elastic_job("flex"))
    first = {p.metadata.name: p.spec.node_name for p in run_all(lmtj, kubelet, "flex", attempt=1)}
    lost = first["flex-1"]
    cordon(lost, True)
    lmtj.core.delete_namespaced_pod("flex-1", lmtj.namespace, grace_period_seconds=0)

    status = shrink_to_one(lmtj, kubelet, "flex", attempt=2)
    assert (status["nodes"], status["elastic"]["nodes"], status["elastic"]["specNodes"], lmtj.get("flex")["spec"]["nodes"]) == (1, 1, 2, 2)
    assert status["replicas"]["active"] == 1 and "consecutiveFailures" not in status
    resized = lmtj.condition("flex", "Resized")
    assert (resized["reason"], "shrinking from 2 to 1 nodes" in resized["message"]) == ("ElasticShrink", True)

    (probe,) = wait_for(lambda: probes(lmtj, "flex"), "a capacity probe")
    assert probe.metadata.name == wiring.probe_name("flex", 0)
    assert wiring.NODE_RANK_LABEL not in probe.metadata.labels and wiring.ATTEMPT_LABEL not in probe.metadata.labels
    assert probe.metadata.owner_references[0].uid == lmtj.get("flex")["metadata"]["uid"]
    unschedulable = wait_for(lambda: [c for c in lmtj.core.read_namespaced_pod(probe.metadata.name, lmtj.namespace).status.conditions or []
                                      if c.type == "PodScheduled" and c.reason == "Unschedulable"], "the scheduler to find no node for the probe")  # fmt: skip
    assert unschedulable

    cordon(lost, False)
    grown = wait_for(lambda: lmtj.status("flex").get("nodes") == 2 and lmtj.status("flex"), "the gang to grow back", timeout=60)
    assert "elastic" not in grown
    run_all(lmtj, kubelet, "flex", attempt=grown["attempt"], nodes=2)
    wait_for(lambda: not probes(lmtj, "flex"), "the probe to go")
    status = lmtj.status("flex")
    assert (status["resizes"], status["disruptions"], status["nodes"]) == (2, 1, 2) and "consecutiveFailures" not in status
    events = [(kind, reason, message) for kind, reason, message in lmtj.events("flex") if reason.startswith("Elastic")]
    assert [(kind, reason) for kind, reason, _ in events] == [("Warning", "ElasticShrink"), ("Normal", "ElasticGrow")]
    assert "from 2 to 1 nodes" in events[0][2] and "from 1 to 2 nodes" in events[1][2]


def test_the_probes_of_a_shrunk_job_go_with_the_job(lmtj, kubelet, cordon, pool):
    cordon(pool[0], True)
    lmtj.create(elastic_job("gone"))
    shrink_to_one(lmtj, kubelet, "gone", attempt=1)
    wait_for(lambda: probes(lmtj, "gone"), "a capacity probe")

    lmtj.custom.delete_namespaced_custom_object(*lmtj.group, lmtj.namespace, lmtj.plural, "gone")
    wait_for(lambda: not lmtj.pods("gone"), "the pods and the probe to go")


def test_a_shrunk_gang_survives_an_operator_restart_and_still_grows_back(lmtj, kubelet, cordon, pool, operator):
    cordon(pool[0], True)
    lmtj.create(elastic_job("kept"))
    shrunk = shrink_to_one(lmtj, kubelet, "kept", attempt=1)
    wait_for(lambda: probes(lmtj, "kept"), "a capacity probe")

    # The new process has nothing in memory: it reads status.elastic back from the job. Had it
    # lost the choice, it would create the missing rank 1 in the shrunk attempt, not grow the gang.
    operator.stop()
    operator.start()
    cordon(pool[0], False)
    grown = wait_for(lambda: lmtj.status("kept").get("nodes") == 2 and lmtj.status("kept"), "the gang to grow back", timeout=60)
    assert (grown["attempt"], grown["resizes"]) == (shrunk["attempt"] + 1, 2) and "elastic" not in grown
    assert [reason for _, reason, _ in lmtj.events("kept") if reason.startswith("Elastic")] == ["ElasticShrink", "ElasticGrow"]
    run_all(lmtj, kubelet, "kept", attempt=grown["attempt"], nodes=2)
    wait_for(lambda: not probes(lmtj, "kept"), "the probe to go")
