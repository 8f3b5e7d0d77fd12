"""Kueue admits and preempts whole gangs: the real Kueue (built from tools/kueue), the real
operator, and the test node agent running the trainer.

Each job's pods carry a CPU request and join Kueue as one plain pod group per attempt; a
ClusterQueue of this test's own holds the CPU quota. A gang without quota for all its pods
waits, gated, as a whole; a higher-priority workload in the same ClusterQueue preempts it,
the trainer checkpoints at SIGTERM, and the job waits again and resumes from that checkpoint.

    .venv/bin/python -m pytest tests/e2e/test_kueue.py
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from training_helpers import STEP_SECONDS, STOP_SECONDS, PodExits, Training, attempts, job_processes, of_kind, shakespeare_job, wait_for

from kubespeed import wiring
from kubespeed.checkpoints import LATEST_FILE, tag_for
from kubespeed_cli.dev.cluster import ControlPlane
from kubespeed_cli.dev.kueue import Kueue
from kubespeed_operator.build.podgroup import KUEUE_ADMISSION_GATE, kueue_pod_group

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KUEUE_API = ("kueue.x-k8s.io", "v1beta2")
QUEUE = "team"
POD_CPU = 1
ADMIT_SECONDS = 120
FINISH_SECONDS = 400


def queue_objects(name: str, namespace: str, cpu: int) -> list[dict[str, Any]]:
    """A ResourceFlavor, a ClusterQueue with `cpu` CPUs (and memory to spare) that serves only `namespace` and preempts
    lower priorities within itself, and the LocalQueue QUEUE that points at it."""
    api = "/".join(KUEUE_API)
    return [
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": name}},
        {
            "apiVersion": api,
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                # Memory too: training pods request memory per rank by default, and Kueue admits
                # no workload that asks for a resource its ClusterQueue does not cover.
                "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": name, "resources": [
                    {"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": "1Ti"}]}]}],
                "preemption": {"withinClusterQueue": "LowerPriority"},
            },
        },
        {"apiVersion": api, "kind": "LocalQueue", "metadata": {"name": QUEUE, "namespace": namespace}, "spec": {"clusterQueue": name}},
    ]


@pytest.fixture(scope="module")
def kueue(control_plane: ControlPlane, kueue_folder: Path) -> Iterator[Kueue]:
    with Kueue(control_plane, kueue_folder) as running:
        yield running


@pytest.fixture
def queues(kueue: Kueue, namespace: str) -> Iterator[str]:
    """This test's ClusterQueue (named after the namespace), with room for one pod of a gang of two."""
    kueue.apply(queue_objects(namespace, namespace, cpu=POD_CPU))
    yield namespace
    kueue.kubectl("delete", "clusterqueue,resourceflavor", namespace, "--ignore-not-found", "--wait=false")


def queued_job(training: Training, *, steps: int, checkpoint_interval: int, backoff_limit: int = 2, **scheduling: Any) -> None:
    image = next(iter(training.agent.images))
    manifest = shakespeare_job(training.name, image, steps=steps, checkpoint_interval=checkpoint_interval, procs_per_node=1)
    manifest["spec"]["scheduling"].update(queue=QUEUE, **scheduling)
    manifest["spec"]["runPolicy"]["backoffLimit"] = backoff_limit
    manifest["spec"]["resources"] = {"requests": {"cpu": str(POD_CPU)}}
    training.jobs.create(manifest)


def workload(training: Training, name: str) -> dict[str, Any] | None:
    custom = client.CustomObjectsApi(training.jobs.core.api_client)
    try:
        return custom.get_namespaced_custom_object(*KUEUE_API, training.jobs.namespace, "workloads", name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def story(training: Training, kueue: Kueue) -> str:
    """Every Event of the namespace in order, Kueue's log tail and the job's own explanation."""
    events = sorted(training.jobs.core.list_namespaced_event(training.jobs.namespace).items, key=lambda e: str(e.last_timestamp or e.event_time))
    lines = [f"{e.last_timestamp or e.event_time} {e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}" for e in events]
    return "\n".join([*lines, "----- kueue log", kueue.log_tail(60), training.explain()])


def set_quota(kueue: Kueue, cluster_queue: str, cpu: int) -> None:
    kueue.apply(queue_objects(cluster_queue, cluster_queue, cpu=cpu)[1:2])


def waiting_for_admission(training: Training, attempt: int) -> dict[str, Any] | None:
    status = training.jobs.status(training.name)
    running = condition({"status": status}, "Running")
    waiting = status.get("attempt") == attempt and running.get("reason") == "WaitingForAdmission"
    return status if waiting else None


def test_a_gang_without_quota_for_every_pod_waits_whole_then_trains_once_quota_is_there(
    training: Training, kueue: Kueue, queues: str
) -> None:
    queued_job(training, steps=20, checkpoint_interval=10)
    group = kueue_pod_group(training.name, 1)

    # Kueue has looked at the whole gang and found no room for it: 2 CPUs asked, 1 in the queue.
    def refused() -> dict[str, Any] | None:
        reserved = condition(workload(training, group), "QuotaReserved")
        return reserved if reserved.get("status") == "False" and "insufficient" in reserved.get("message", "") else None

    wait_for(refused, f"Kueue to refuse quota to workload {group}", ADMIT_SECONDS, explain=training.explain)
    status = wait_for(lambda: waiting_for_admission(training, 1), "the job to say it waits for admission", ADMIT_SECONDS,
                      explain=training.explain)  # fmt: skip
    assert status["phase"] == "Pending"
    assert f"LocalQueue {QUEUE}" in condition({"status": status}, "Running")["message"]
    pods = training.jobs.pods(training.name)
    assert len(pods) == 2
    # No partial gang: neither pod may be placed, and nothing of the job runs.
    assert all(pod.spec.node_name is None for pod in pods)
    assert all(KUEUE_ADMISSION_GATE in [g.name for g in pod.spec.scheduling_gates or []] for pod in pods)
    assert job_processes(training.name) == []

    set_quota(kueue, queues, cpu=2 * POD_CPU)
    status = training.wait_phase("Succeeded", FINISH_SECONDS)
    assert status.get("restarts", 0) == 0 and status["attempt"] == 1
    assert of_kind(training.metrics(), "train")[-1]["step"] == 20
    assert condition(workload(training, group), "Finished").get("status") == "True"


def test_a_higher_priority_workload_preempts_the_gang_which_checkpoints_waits_and_resumes(
    training: Training, kueue: Kueue, queues: str
) -> None:
    low, high = f"{queues}-low", f"{queues}-high"
    scheduling = client.SchedulingV1Api(training.jobs.core.api_client)
    for name, value in ((low, 100), (high, 1000)):
        scheduling.create_priority_class({"metadata": {"name": name}, "value": value})
    try:
        preempt_and_resume(training, kueue, queues, low, high)
    finally:
        for name in (low, high):
            scheduling.delete_priority_class(name)


def preempt_and_resume(training: Training, kueue: Kueue, cluster_queue: str, low: str, high: str) -> None:
    set_quota(kueue, cluster_queue, cpu=2 * POD_CPU)
    steps = 60
    # No periodic checkpoint before the last step: the only one to resume from is SIGTERM's.
    # backoffLimit 0: had the preemption counted as a failure, the job would fail instead of waiting.
    queued_job(training, steps=steps, checkpoint_interval=1000, backoff_limit=0, priorityClassName=low)
    training.wait_step(3)

    urgent = {
        "apiVersion": "/".join(KUEUE_API),
        "kind": "Workload",
        "metadata": {"name": "urgent"},
        "spec": {
            "queueName": QUEUE,
            "priorityClassRef": {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": high},
            "priority": 1000,
            "podSets": [{"name": "main", "count": 2, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "urgent", "resources": {"requests": {"cpu": str(POD_CPU)}}}],
            }}}],  # fmt: skip
        },
    }
    custom = client.CustomObjectsApi(training.jobs.core.api_client)
    with PodExits(training.jobs.core, training.jobs.namespace, training.name) as exits:
        custom.create_namespaced_custom_object(*KUEUE_API, training.jobs.namespace, "workloads", urgent)
        status = wait_for(lambda: waiting_for_admission(training, 2), "the preempted job to wait for admission again",
                          STEP_SECONDS, explain=training.explain)  # fmt: skip
        wait_for(lambda: not job_processes(training.name), "the preempted pods' processes to end", STOP_SECONDS,
                 explain=training.explain)  # fmt: skip
    # Attempt 1's Workload is gone with its pods (they owned it); Kueue's Events on it stay.
    first = kueue_pod_group(training.name, 1)
    events = training.jobs.core.list_namespaced_event(training.jobs.namespace, field_selector=f"involvedObject.name={first}").items
    assert "Preempted" in {event.reason for event in events}, [(e.reason, e.message) for e in events]
    assert condition(workload(training, "urgent"), "QuotaReserved").get("status") == "True"
    # Kueue deletes the pods one after another: the ranks agree to stop at the first SIGTERM and
    # checkpoint together, so a pod whose own SIGTERM came after its ranks had stopped exits 75
    # (launch.exit_code), still as a disruption (Kueue's TerminationTarget). No pod was killed.
    codes = {exits.exits.get((wiring.pod_name(training.name, rank), "1")) for rank in range(2)}
    assert wiring.EXIT_PREEMPTED.code in codes and codes <= {wiring.EXIT_PREEMPTED.code, wiring.EXIT_RETRYABLE.code}, \
        f"{exits.exits}\n{story(training, kueue)}"
    assert status["phase"] == "Pending" and status.get("disruptions") == 1
    saved = of_kind(training.metrics(), "checkpoint")
    assert len(saved) == 1 and saved[0]["step"] == of_kind(training.metrics(), "train")[-1]["step"] >= 3, saved
    assert (training.checkpoints / LATEST_FILE).read_text().strip() == tag_for(saved[0]["step"])

    # The urgent work is done: its quota frees and the gang is admitted again.
    custom.delete_namespaced_custom_object(*KUEUE_API, training.jobs.namespace, "workloads", "urgent")
    status = training.wait_phase("Succeeded", FINISH_SECONDS)
    assert status["attempt"] == 2 and status["restarts"] == 1 and status["disruptions"] == 1
    second = attempts(training.metrics())[1]
    assert of_kind(second, "resume")[0]["step"] == saved[0]["step"]
    assert of_kind(second, "train")[0]["step"] == saved[0]["step"] + 1
    assert of_kind(second, "train")[-1]["step"] == steps
