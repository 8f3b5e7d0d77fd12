"""The operator against the real control plane: apply, run, succeed, fail, gang restart.

Pods are driven the way a kubelet would report them (kubelet.py); the operator
runs as its own process under the shipped RBAC (operator_fixture.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from kubespeed import wiring
from kubespeed_operator.build.render import render
from operator_fixture import job_manifest, run_all, wait_for

pytestmark = pytest.mark.integration


def _matches(rendered: Any, created: Any) -> bool:
    """`rendered` is contained in `created`: the API server may add defaults, never change what was asked."""
    if isinstance(rendered, dict):
        return isinstance(created, dict) and all(k in created and _matches(v, created[k]) for k, v in rendered.items())
    if isinstance(rendered, list):
        return isinstance(created, list) and all(any(_matches(r, c) for c in created) for r in rendered)
    return str(rendered) == str(created)


def test_apply_creates_every_child_as_render_prints_it_and_pods_land_on_gpu_nodes(lmtj, control_plane, gpu_nodes):
    from kubernetes import dynamic

    job = lmtj.create(job_manifest("wired"))
    pods = lmtj.wait_pods("wired", 2, attempt=1)
    assert {p.spec.node_name for p in pods} <= set(gpu_nodes)
    assert [p.metadata.labels[wiring.NODE_RANK_LABEL] for p in pods] == ["0", "1"]

    client = dynamic.DynamicClient(control_plane.api_client())
    expected = render(job)
    assert [o["kind"] for o in expected] == ["Service", "ConfigMap", "NetworkPolicy", "Pod", "Pod"]
    for obj in expected:
        resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        created = resource.get(name=obj["metadata"]["name"], namespace=lmtj.namespace).to_dict()
        for part in ("metadata", "spec", "data"):
            if part in obj:
                assert _matches(obj[part], created[part]), f"{obj['kind']} {obj['metadata']['name']}: {part} differs from render"

    status = lmtj.wait_phase("wired", "Pending")
    assert (status["attempt"], status["observedGeneration"]) == (1, 1)


def test_the_job_follows_its_pods_to_running_and_succeeded(lmtj, kubelet):
    lmtj.create(job_manifest("ok"))
    pods = run_all(lmtj, kubelet, "ok", attempt=1)
    status = lmtj.status("ok")
    assert status["replicas"] == {"active": 2, "ready": 2, "succeeded": 0, "failed": 0}
    assert lmtj.condition("ok", "Running")["status"] == "True"
    assert lmtj.condition("ok", "Created")["status"] == "True"
    assert status["startTime"]

    for pod in pods:
        kubelet.exit(lmtj.namespace, pod.metadata.name, 0)
    status = lmtj.wait_phase("ok", "Succeeded")
    assert status["completionTime"] and status["restarts"] == 0
    assert lmtj.condition("ok", "Running")["status"] == "False"
    reasons = wait_for(lambda: [r for _, r, _ in lmtj.events("ok")] if "Succeeded" in [r for _, r, _ in lmtj.events("ok")] else None, "the Succeeded Event")
    assert {"PodsStarting", "PodsRunning", "Succeeded"} <= set(reasons)


def test_jobs_applied_together_each_get_their_pods_status_and_events(lmtj, kubelet):
    """Startup reports may wait while other jobs' pods are created (run/pods_first.py); none is lost."""
    from concurrent.futures import ThreadPoolExecutor

    names = [f"burst-{i}" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda name: lmtj.create(job_manifest(name)), names))
    for name in names:
        run_all(lmtj, kubelet, name, attempt=1)
    for name in names:
        status = lmtj.status(name)
        assert (status["attempt"], status["replicas"]["ready"], status["startTime"] is not None) == (1, 2, True)
        reasons = wait_for(lambda: [r for _, r, _ in lmtj.events(name)] if "PodsRunning" in [r for _, r, _ in lmtj.events(name)] else None, f"{name}'s PodsRunning Event")
        # Each startup Event at most once, and no other: a job that waited reports Running directly.
        assert sorted(set(reasons)) == sorted(reasons) and set(reasons) <= {"PodsStarting", "PodsRunning"}, reasons


def test_one_failed_pod_restarts_the_whole_gang_as_attempt_2_never_mixing_attempts(lmtj, kubelet):
    lmtj.create(job_manifest("gang", runPolicy={"backoffLimit": 2}))
    run_all(lmtj, kubelet, "gang", attempt=1)
    kubelet.exit(lmtj.namespace, "gang-1", 1)

    attempts_seen: list[set[str]] = []

    def attempt_2_running() -> bool:
        live = lmtj.pods("gang")
        attempts_seen.append({p.metadata.labels[wiring.ATTEMPT_LABEL] for p in live})
        return len(live) == 2 and all(p.metadata.labels[wiring.ATTEMPT_LABEL] == "2" and p.spec.node_name for p in live)

    wait_for(attempt_2_running, "attempt 2's pods", interval=0.05)
    assert all(len(seen) <= 1 for seen in attempts_seen), f"pods of two attempts existed at once: {attempts_seen}"
    status = lmtj.status("gang")
    assert (status["attempt"], status["restarts"]) == (2, 1)
    env = {e.name: e.value for e in lmtj.pods("gang")[0].spec.containers[0].env}
    assert env[wiring.ENV_ATTEMPT] == "2"
    warnings = [(r, m) for t, r, m in lmtj.events("gang") if t == "Warning"]
    assert any(r == "PodFailed" and "attempt 2" in m and "gang-1" in m for r, m in warnings), warnings

    run_all(lmtj, kubelet, "gang", attempt=2)


def test_exhausting_backoff_limit_fails_the_job_with_the_reason(lmtj, kubelet):
    lmtj.create(job_manifest("flaky", runPolicy={"backoffLimit": 1}))
    run_all(lmtj, kubelet, "flaky", attempt=1)
    kubelet.exit(lmtj.namespace, "flaky-0", 137, reason="OOMKilled")
    run_all(lmtj, kubelet, "flaky", attempt=2)
    kubelet.exit(lmtj.namespace, "flaky-1", 1)
    status = lmtj.wait_phase("flaky", "Failed")
    failed = lmtj.condition("flaky", "Failed")
    assert (failed["reason"], status["restarts"], status["attempt"]) == ("BackoffLimitExceeded", 1, 2)
    assert "backoffLimit is 1" in failed["message"]
    # cleanPodPolicy Running: the rank still running is stopped, the failed one kept for its logs.
    wait_for(lambda: [p.metadata.name for p in lmtj.pods("flaky")] == ["flaky-1"], "only the failed pod to remain")



def test_preemption_restarts_the_gang_without_spending_the_backoff_limit(lmtj, kubelet):
    lmtj.create(job_manifest("spot", runPolicy={"backoffLimit": 0}))
    run_all(lmtj, kubelet, "spot", attempt=1)
    # The node is drained: the trainer checkpoints on SIGTERM and exits 143, twice.
    kubelet.exit(lmtj.namespace, "spot-1", wiring.EXIT_PREEMPTED.code)
    run_all(lmtj, kubelet, "spot", attempt=2)
    kubelet.exit(lmtj.namespace, "spot-0", wiring.EXIT_PREEMPTED.code)
    run_all(lmtj, kubelet, "spot", attempt=3)
    status = lmtj.status("spot")
    assert (status["phase"], status["restarts"], status["disruptions"]) == ("Running", 2, 2)
    assert ("Warning", "PodDisrupted") in [(t, r) for t, r, _ in lmtj.events("spot")]
    # A real failure is still bounded by backoffLimit 0.
    kubelet.exit(lmtj.namespace, "spot-1", 1)
    lmtj.wait_phase("spot", "Failed")
    assert lmtj.condition("spot", "Failed")["reason"] == "BackoffLimitExceeded"


PERMANENT_EXITS = [
    ("a configuration no retry fixes", wiring.EXIT_CONFIG_ERROR.code, "ConfigError",
     "rank 0: spec.deepspeed.precision: fp16 needs a CPU with native fp16", None),
    ("no GPU visible on the first attempt", wiring.EXIT_NO_GPU.code, "NoGPUVisible",
     "rank 0: spec.gpu is true but this pod sees 0 GPU(s) for its 1 rank(s) (CUDA_VISIBLE_DEVICES=unset)", "spec.runtimeClassName"),
]  # fmt: skip


@pytest.mark.parametrize("what, code, reason, line, hint", PERMANENT_EXITS, ids=[c[0].replace(" ", "-") for c in PERMANENT_EXITS])
def test_a_permanent_exit_code_fails_the_job_at_once_in_the_ranks_words(lmtj, kubelet, what, code, reason, line, hint):
    lmtj.create(job_manifest("badexit"))
    run_all(lmtj, kubelet, "badexit", attempt=1)
    kubelet.exit(lmtj.namespace, "badexit-0", code, message=line)
    status = lmtj.wait_phase("badexit", "Failed")
    assert (status["attempt"], status["restarts"]) == (1, 0), what
    failed = lmtj.condition("badexit", "Failed")
    assert failed["reason"] == reason and line in failed["message"], failed
    assert hint is None or hint in failed["message"], failed
    # The Event follows the status write.
    event = wait_for(lambda: next((m for t, r, m in lmtj.events("badexit") if (t, r) == ("Warning", reason)), None), f"a {reason} Event")
    assert line in event, event
