"""Specs only the operator can judge: it says what to fix in a condition and an Event, and does not loop.

The schema refuses what it can at apply time (tests/integration/test_bad_specs.py);
what needs the cluster (a claim that does not exist, an image the kubelet cannot
pull, a ServiceAccount that is missing) ends here.
"""

from __future__ import annotations

import time

import pytest

from operator_fixture import job_manifest, wait_for

pytestmark = pytest.mark.integration


def test_a_missing_claim_keeps_the_job_pending_until_it_exists(lmtj):
    lmtj.create(job_manifest("noclaim", checkpoint={"claimName": "ckpt"}))
    created = wait_for(lambda: lmtj.condition("noclaim", "Created"), "the Created condition")
    assert (created["status"], created["reason"]) == ("False", "ClaimNotFound")
    assert "'ckpt'" in created["message"] and "spec.checkpoint.claimName" in created["message"]
    assert lmtj.status("noclaim")["phase"] == "Pending"
    assert lmtj.pods("noclaim") == []
    wait_for(lambda: ("Warning", "ClaimNotFound") in [(t, r) for t, r, _ in lmtj.events("noclaim")], "a ClaimNotFound Event")

    lmtj.core.create_namespaced_persistent_volume_claim(lmtj.namespace, {
        "metadata": {"name": "ckpt"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    })  # fmt: skip
    lmtj.wait_pods("noclaim", 2, attempt=1, bound=False, timeout=30)
    assert [r for _, r, _ in lmtj.events("noclaim")].count("ClaimNotFound") == 1


def test_an_image_reference_that_can_never_work_fails_the_job(lmtj, kubelet):
    lmtj.create(job_manifest("badimage", image="registry.example/Trainer:latest"))
    pods = lmtj.wait_pods("badimage", 2, attempt=1)
    kubelet.waiting(lmtj.namespace, pods[0].metadata.name, "InvalidImageName", 'Failed to apply default image tag "registry.example/Trainer:latest": invalid reference format')
    status = lmtj.wait_phase("badimage", "Failed")
    failed = lmtj.condition("badimage", "Failed")
    assert failed["reason"] == "ImagePullFailed" and "spec.image" in failed["message"]
    assert status["restarts"] == 0
    # The Event follows the status write.
    wait_for(lambda: ("Warning", "ImagePullFailed") in [(t, r) for t, r, _ in lmtj.events("badimage")], "a ImagePullFailed Event")


def test_an_image_that_does_not_pull_is_reported_once_and_not_retried_in_a_loop(lmtj, kubelet):
    lmtj.create(job_manifest("nopull", image="registry.example/missing:1"))
    pods = lmtj.wait_pods("nopull", 2, attempt=1)
    uids = [p.metadata.uid for p in pods]
    kubelet.waiting(lmtj.namespace, pods[1].metadata.name, "ErrImagePull", "manifest unknown")
    running = wait_for(lambda: (c := lmtj.condition("nopull", "Running")) and c["status"] == "False" and c, "the Running=False condition")
    assert running["reason"] == "ErrImagePull" and "spec.image" in running["message"] and "nopull-1" in running["message"]
    kubelet.waiting(lmtj.namespace, pods[1].metadata.name, "ErrImagePull", "manifest unknown")
    time.sleep(3)
    assert [p.metadata.uid for p in lmtj.pods("nopull")] == uids
    assert lmtj.status("nopull")["phase"] == "Pending"
    assert [r for _, r, _ in lmtj.events("nopull")].count("ErrImagePull") == 1


def test_a_missing_service_account_is_named_in_the_condition(lmtj):
    lmtj.create(job_manifest("nosa", serviceAccountName="ghost"))
    created = wait_for(lambda: lmtj.condition("nosa", "Created"), "the Created condition")
    assert (created["status"], created["reason"]) == ("False", "ServiceAccountNotFound")
    assert "ghost" in created["message"] and "spec.serviceAccountName" in created["message"]
    assert lmtj.status("nosa")["phase"] == "Pending"
