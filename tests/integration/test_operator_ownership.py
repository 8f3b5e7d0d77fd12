"""A job owns its children by UID: a job deleted and created again under its name never runs on the old one's objects.

The new job waits, Pending with reason WaitingForOldObjects, while anything that
holds its names belongs to another owner, then creates its own children, with its
own (changed) spec. Every status it writes is recorded from a watch, so a moment
of "Running" on the old pods would be seen.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from kubernetes import client

from kubespeed import wiring
from kubelet import follow
from operator_fixture import JobClient, job_manifest, run_all, wait_for

pytestmark = pytest.mark.integration

TRAINING = {"steps": 10, "globalBatchSize": 8, "microBatchSize": 4}


class StatusLog:
    """Every status of jobs named `name`, by UID, in the order the API server stored them."""

    def __init__(self, lmtj: JobClient, name: str) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.stop = threading.Event()
        args = (wiring.API_GROUP, wiring.API_VERSION, lmtj.namespace, wiring.PLURAL)
        self.thread = threading.Thread(
            target=follow, args=(lmtj.custom.list_namespaced_custom_object, self._on, self.stop, *args),
            kwargs={"field_selector": f"metadata.name={name}"}, daemon=True,
        )  # fmt: skip
        self.thread.start()

    def _on(self, kind: str, job: dict[str, Any]) -> None:
        self.seen.append((job["metadata"]["uid"], job.get("status") or {}))

    def of(self, uid: str) -> list[dict[str, Any]]:
        return [status for owner, status in self.seen if owner == uid]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def owners(lmtj: JobClient, name: str) -> dict[str, str | None]:
    """'Kind name' -> controller UID of each child of the job's name (Service, ConfigMap, NetworkPolicy, pods)."""
    found = [lmtj.core.read_namespaced_service(name, lmtj.namespace), lmtj.core.read_namespaced_config_map(f"{name}-config", lmtj.namespace),
             lmtj.networking.read_namespaced_network_policy(name, lmtj.namespace), *lmtj.pods(name)]  # fmt: skip
    return {f"{obj.kind or type(obj).__name__} {obj.metadata.name}": next((r.uid for r in obj.metadata.owner_references or [] if r.controller), None)
            for obj in found}  # fmt: skip


def deletes_sent(metrics: str) -> float:
    """DELETE requests the operator sent that the API server answered (gone already included)."""
    found = re.findall(r'kubespeed_operator_api_requests_total\{code="([1-4]\d\d)",verb="DELETE"\} (\S+)', metrics)
    return sum(float(value) for _, value in found)


def steps_in_config(lmtj: JobClient, name: str) -> str:
    return lmtj.core.read_namespaced_config_map(f"{name}-config", lmtj.namespace).data[wiring.TRAINER_CONFIG_KEY]


def test_deleted_and_created_again_with_a_changed_spec_it_waits_for_the_old_objects_then_runs_its_own(lmtj, kubelet):
    log = StatusLog(lmtj, "again")
    try:
        old_uid = lmtj.create(job_manifest("again", training=TRAINING))["metadata"]["uid"]
        old_pods = run_all(lmtj, kubelet, "again", attempt=1)
        # As `kubectl delete` then `kubectl create` at once: background deletion, so the
        # garbage collector removes the old children only afterwards.
        lmtj.custom.delete_namespaced_custom_object(wiring.API_GROUP, wiring.API_VERSION, lmtj.namespace, wiring.PLURAL, "again")
        new_uid = lmtj.create(job_manifest("again", training={**TRAINING, "steps": 20}))["metadata"]["uid"]

        pods = lmtj.wait_pods("again", 2, attempt=1)
        assert {p.metadata.uid for p in pods}.isdisjoint(p.metadata.uid for p in old_pods)
        for pod in pods:
            kubelet.run(lmtj.namespace, pod.metadata.name)
        lmtj.wait_phase("again", "Running")
        wait_for(lambda: set(owners(lmtj, "again").values()) == {new_uid}, "every child to be the new job's", explain=lambda: owners(lmtj, "again"))
        assert "steps: 20" in steps_in_config(lmtj, "again")

        statuses = log.of(new_uid)
        # Running only from its own pods: before that, Pending, and no ready replica (the old pods were all ready).
        first_running = next(i for i, status in enumerate(statuses) if status.get("phase") == "Running")
        before = statuses[:first_running]
        assert all(status.get("phase") in (None, "Pending") for status in before), statuses
        assert all((status.get("replicas") or {}).get("ready", 0) == 0 for status in before), statuses
        waiting = [c for status in statuses for c in status.get("conditions") or [] if c["type"] == "Created" and c["status"] == "False"]
        assert all(c["reason"] == "WaitingForOldObjects" for c in waiting), waiting
        assert old_uid not in owners(lmtj, "again").values()
    finally:
        log.close()


def test_objects_another_owner_holds_are_never_adopted_and_the_job_says_which(lmtj, kubelet):
    old_uid = lmtj.create(job_manifest("orphans", training=TRAINING))["metadata"]["uid"]
    run_all(lmtj, kubelet, "orphans", attempt=1)
    # Orphan propagation: the old job goes, its children stay, no longer owned by anyone.
    lmtj.custom.delete_namespaced_custom_object(wiring.API_GROUP, wiring.API_VERSION, lmtj.namespace, wiring.PLURAL, "orphans",
                                                body={"propagationPolicy": "Orphan"})  # fmt: skip
    wait_for(lambda: lmtj.get("orphans") is None, "the old job to be gone")
    new_uid = lmtj.create(job_manifest("orphans", training={**TRAINING, "steps": 20}))["metadata"]["uid"]

    created = wait_for(lambda: (c := lmtj.condition("orphans", "Created")) and c["reason"] == "WaitingForOldObjects" and c, "WaitingForOldObjects")
    assert created["status"] == "False"
    for held in ("Service orphans", "ConfigMap orphans-config", "NetworkPolicy orphans", "Pod orphans-0", "Pod orphans-1"):
        assert held in created["message"], created["message"]
    assert lmtj.status("orphans")["phase"] == "Pending"
    wait_for(lambda: ("Warning", "WaitingForOldObjects") in [(t, r) for t, r, _ in lmtj.events("orphans")], "a WaitingForOldObjects Event")
    assert new_uid not in owners(lmtj, "orphans").values() and old_uid not in owners(lmtj, "orphans").values()
    assert "steps: 10" in steps_in_config(lmtj, "orphans")

    # Whoever owns them now deletes them; the job then makes its own.
    lmtj.core.delete_namespaced_service("orphans", lmtj.namespace)
    lmtj.core.delete_namespaced_config_map("orphans-config", lmtj.namespace)
    lmtj.networking.delete_namespaced_network_policy("orphans", lmtj.namespace)
    lmtj.core.delete_collection_namespaced_pod(lmtj.namespace, label_selector=f"{wiring.JOB_LABEL}=orphans", grace_period_seconds=0)
    run_all(lmtj, kubelet, "orphans", attempt=1)
    assert set(owners(lmtj, "orphans").values()) == {new_uid}
    assert "steps: 20" in steps_in_config(lmtj, "orphans")
    assert lmtj.condition("orphans", "Created")["reason"] == "PodsCreated"


def test_a_deleted_jobs_pods_are_deleted_by_the_operator_not_left_to_the_garbage_collector(lmtj, kubelet, operator):
    """As `kubectl delete`: the operator deletes the job's pods itself once it sees the job go
    (the garbage collector, at 20 requests a second, would free the GPUs of many jobs a minute late)."""
    lmtj.create(job_manifest("gone", training=TRAINING))
    pods = run_all(lmtj, kubelet, "gone", attempt=1)
    before = deletes_sent(operator.metrics())
    lmtj.custom.delete_namespaced_custom_object(wiring.API_GROUP, wiring.API_VERSION, lmtj.namespace, wiring.PLURAL, "gone")
    wait_for(lambda: not lmtj.pods("gone"), "the deleted job's pods to be gone")
    assert deletes_sent(operator.metrics()) - before >= len(pods)
