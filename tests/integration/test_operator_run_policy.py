"""runPolicy against the real control plane: suspend/resume, deadline, TTL, the startup bound; and progress from rank 0."""

from __future__ import annotations

import http.server
import random
import threading
import time
from collections.abc import Iterator

import pytest

from kubespeed import wiring
from operator_fixture import job_manifest, run_all, wait_for

pytestmark = pytest.mark.integration


def test_suspend_removes_the_pods_and_resume_starts_a_new_attempt(lmtj, kubelet):
    lmtj.create(job_manifest("pause"))
    run_all(lmtj, kubelet, "pause", attempt=1)

    lmtj.patch_spec("pause", {"runPolicy": {"suspend": True}})
    status = lmtj.wait_phase("pause", "Suspended")
    wait_for(lambda: not lmtj.pods("pause"), "the pods to go")
    assert status["attempt"] == 2 and status["restarts"] == 0
    children = lmtj.core.read_namespaced_config_map(wiring.config_map_name("pause"), lmtj.namespace)
    assert wiring.HOSTFILE_KEY in children.data

    lmtj.patch_spec("pause", {"runPolicy": {"suspend": False}})
    pods = lmtj.wait_pods("pause", 2, attempt=2)
    assert len(pods) == 2
    run_all(lmtj, kubelet, "pause", attempt=2)
    reasons = [r for _, r, _ in lmtj.events("pause")]
    assert "Suspended" in reasons and "Resumed" in reasons


def test_the_active_deadline_fails_the_job(lmtj, kubelet):
    lmtj.create(job_manifest("late", runPolicy={"activeDeadlineSeconds": 3}))
    run_all(lmtj, kubelet, "late", attempt=1)
    lmtj.wait_phase("late", "Failed", timeout=30)
    assert lmtj.condition("late", "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: not lmtj.pods("late"), "the running pods to be stopped")


def test_ttl_after_finished_deletes_the_job_and_its_children_and_nothing_restarts(lmtj, kubelet):
    lmtj.create(job_manifest("brief", runPolicy={"ttlSecondsAfterFinished": 2}))
    pods = run_all(lmtj, kubelet, "brief", attempt=1)
    for pod in pods:
        kubelet.exit(lmtj.namespace, pod.metadata.name, 0)
    lmtj.wait_phase("brief", "Succeeded")
    wait_for(lambda: lmtj.get("brief") is None, "the job to be deleted")

    def children_gone() -> bool:
        services = lmtj.core.list_namespaced_service(lmtj.namespace).items
        maps = [m for m in lmtj.core.list_namespaced_config_map(lmtj.namespace).items if m.metadata.name != "kube-root-ca.crt"]
        policies = lmtj.networking.list_namespaced_network_policy(lmtj.namespace).items
        return not services and not maps and not policies and not lmtj.pods("brief")

    wait_for(children_gone, "the garbage collector to delete the children")
    # A few timer periods later nothing came back.
    with pytest.raises(AssertionError):
        wait_for(lambda: lmtj.pods("brief") or lmtj.get("brief"), "anything to come back", timeout=6)


def test_a_gang_with_an_unschedulable_pod_is_released_then_retried_and_says_why(lmtj, kubelet):
    # Another workload holds 5 of one node's 8 GPUs: the real scheduler can place only one of
    # the gang's two 5-GPU pods.
    hog = {
        "metadata": {"name": "hog"},
        "spec": {
            "tolerations": [{"key": wiring.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "hog", "image": "hog:1", "resources": {"limits": {wiring.GPU_RESOURCE: "5"}}}],
        },
    }
    lmtj.core.create_namespaced_pod(lmtj.namespace, hog)
    wait_for(lambda: lmtj.core.read_namespaced_pod("hog", lmtj.namespace).spec.node_name, "the hog to be placed")
    lmtj.create(job_manifest("whole", procsPerNode=5, training={"steps": 10, "globalBatchSize": 40, "microBatchSize": 4},
                             runPolicy={"startupTimeoutSeconds": 10}))  # fmt: skip

    released = wait_for(lambda: (lmtj.condition("whole", "Running") or {}).get("reason") == "StartupTimeout"
                        and lmtj.condition("whole", "Running"), "the gang to be released", timeout=60)  # fmt: skip
    assert released["status"] == "False" and "Unschedulable" in released["message"]
    assert wiring.GPU_RESOURCE in released["message"] and "runPolicy.startupTimeoutSeconds (10s)" in released["message"]
    status = lmtj.status("whole")
    assert (status["phase"], status["restarts"]) == ("Pending", 0) and "consecutiveFailures" not in status
    assert ("Warning", "StartupTimeout") in [(kind, reason) for kind, reason, _ in lmtj.events("whole")]

    lmtj.core.delete_namespaced_pod("hog", lmtj.namespace, grace_period_seconds=0)
    run_all(lmtj, kubelet, "whole", attempt=status["attempt"])
    assert "nextAttemptTime" not in lmtj.status("whole")


METRICS = """# HELP kubespeed_step Optimizer steps done.
# TYPE kubespeed_step gauge
kubespeed_step 420
kubespeed_total_steps 1000
kubespeed_loss{split="train"} 1.98771
kubespeed_tokens_per_second 51234.5
kubespeed_eta_seconds 754
kubespeed_checkpoint_step 400
"""


@pytest.fixture
def rank0_metrics() -> Iterator[str]:
    """A Prometheus endpoint on a loopback address of its own, on the trainer's metrics port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            body = METRICS.encode()
            self.send_response(200 if self.path == wiring.METRICS_PATH else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    for _ in range(20):
        ip = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        try:
            server = http.server.HTTPServer((ip, wiring.METRICS_PORT), Handler)
            break
        except OSError:
            continue
    else:
        pytest.fail(f"no loopback address had port {wiring.METRICS_PORT} free")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ip
    finally:
        server.shutdown()
        server.server_close()


def test_progress_is_read_from_rank_0_into_status(lmtj, kubelet, rank0_metrics):
    lmtj.create(job_manifest("talky"))
    pods = lmtj.wait_pods("talky", 2, attempt=1)
    # Rank 1's address (TEST-NET-1) answers nothing: only rank 0 is read.
    kubelet.run(lmtj.namespace, pods[1].metadata.name, ip="192.0.2.20")
    kubelet.run(lmtj.namespace, pods[0].metadata.name, ip=rank0_metrics)
    progress = wait_for(lambda: lmtj.status("talky").get("progress", {}).get("step") and lmtj.status("talky")["progress"], "status.progress")
    assert {k: progress[k] for k in ("step", "totalSteps", "loss", "tokensPerSecond", "eta")} == {
        "step": 420, "totalSteps": 1000, "loss": "1.9877", "tokensPerSecond": "51234", "eta": "12m34s",
    }
    assert lmtj.status("talky")["checkpoint"]["step"] == 400


def test_an_unreachable_metrics_endpoint_leaves_the_job_running(lmtj, kubelet):
    lmtj.create(job_manifest("mute"))
    pods = lmtj.wait_pods("mute", 2, attempt=1)
    for pod in pods:
        # 192.0.2.0/24 is TEST-NET-1: nothing answers there.
        kubelet.run(lmtj.namespace, pod.metadata.name, ip=f"192.0.2.{10 + int(pod.metadata.labels[wiring.NODE_RANK_LABEL])}")
    lmtj.wait_phase("mute", "Running")
    time.sleep(3)  # a few progress intervals of the test operator (1 s), each read failing
    status = lmtj.status("mute")
    assert status["phase"] == "Running" and "step" not in status["progress"]
    kubelet.exit(lmtj.namespace, pods[0].metadata.name, 0)
    kubelet.exit(lmtj.namespace, pods[1].metadata.name, 0)
    lmtj.wait_phase("mute", "Succeeded")
