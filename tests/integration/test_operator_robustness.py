"""The operator survives itself: killed mid-creation, restarted mid-run, a second replica, its metrics,
and its liveness check fails when its pod watch is stuck."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from kubespeed import wiring
from operator_fixture import OperatorProcess, job_manifest, run_all, wait_for
from proxy import FreezableProxy

pytestmark = pytest.mark.integration


def _ranks(lmtj, name):
    return sorted(int(p.metadata.labels[wiring.NODE_RANK_LABEL]) for p in lmtj.pods(name))


def test_killed_after_one_pod_of_two_a_restart_makes_exactly_one_pod_per_rank(lmtj, kubelet, operator):
    # A quota of one pod stops the operator right after it created one of the two pods, deterministically.
    quota = {"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}}
    lmtj.core.create_namespaced_resource_quota(lmtj.namespace, quota)
    wait_for(lambda: (lmtj.core.read_namespaced_resource_quota("one-pod", lmtj.namespace).status.hard or {}).get("pods"), "the quota to be counted")
    lmtj.create(job_manifest("crash", nodes=2))
    created = wait_for(lambda: (c := lmtj.condition("crash", "Created")) and c["reason"] == "QuotaExceeded" and c, "QuotaExceeded")
    assert "quota" in created["message"]
    assert len(_ranks(lmtj, "crash")) == 1

    operator.kill()
    lmtj.core.patch_namespaced_resource_quota("one-pod", lmtj.namespace, {"spec": {"hard": {"pods": "10"}}})
    wait_for(lambda: lmtj.core.read_namespaced_resource_quota("one-pod", lmtj.namespace).status.hard["pods"] == "10", "the quota to be raised")
    operator.start()

    pods = lmtj.wait_pods("crash", 2, attempt=1)
    assert _ranks(lmtj, "crash") == [0, 1]
    run_all(lmtj, kubelet, "crash", attempt=1)
    assert [p.metadata.uid for p in lmtj.pods("crash")] == [p.metadata.uid for p in pods]


def test_a_restart_mid_run_converges_to_the_same_state(lmtj, kubelet, operator):
    lmtj.create(job_manifest("steady"))
    pods = run_all(lmtj, kubelet, "steady", attempt=1)
    before = lmtj.status("steady")
    operator.kill()
    kubelet.exit(lmtj.namespace, "steady-0", 0)
    kubelet.exit(lmtj.namespace, "steady-1", 0)
    operator.start()
    status = lmtj.wait_phase("steady", "Succeeded")
    assert (status["attempt"], status["restarts"], status["startTime"]) == (1, 0, before["startTime"])
    assert [p.metadata.uid for p in lmtj.pods("steady")] == [p.metadata.uid for p in pods]


def test_a_second_replica_waits_for_the_lease_and_takes_over_when_the_leader_dies(lmtj, kubelet, operator, operator_setup):
    kubeconfig, folder = operator_setup
    standby = OperatorProcess(kubeconfig, folder, identity="standby-operator")
    standby.start(wait_for_lease=False)
    try:
        time.sleep(2)
        assert "waiting for Lease" in standby.log() and "leading" not in standby.log()
        assert 'verb="POST"' not in standby.metrics()

        operator.kill()
        wait_for(lambda: "leading: Lease" in standby.log(), "the standby to take the Lease", timeout=40)
        lmtj.create(job_manifest("handover"))
        run_all(lmtj, kubelet, "handover", attempt=1)
        standby.assert_clean_log()
    finally:
        standby.stop()
        operator.start()


def test_operator_metrics_show_jobs_by_phase_reconciles_and_restarts(lmtj, kubelet, operator):
    lmtj.create(job_manifest("counted", runPolicy={"backoffLimit": 1}))
    run_all(lmtj, kubelet, "counted", attempt=1)
    kubelet.exit(lmtj.namespace, "counted-0", 1)
    run_all(lmtj, kubelet, "counted", attempt=2)
    text = operator.metrics()
    assert 'kubespeed_operator_jobs{phase="Running"}' in text
    assert "kubespeed_operator_reconcile_duration_seconds_count" in text
    restarts = [line for line in text.splitlines() if line.startswith("kubespeed_operator_gang_restarts_total")]
    assert restarts and float(restarts[0].split()[-1]) >= 1
    assert operator.healthy()


def _restart_api_server(control_plane) -> None:
    """Stop kube-apiserver and start it again with the same flags (the control plane offers no public call)."""
    from kubespeed_cli.dev.processes import http_ok, stop, wait_until

    old = next(p for p in control_plane.processes if p.name == "kube-apiserver")
    stop(old)
    control_plane.processes.remove(old)
    time.sleep(2)
    new = control_plane._spawn("kube-apiserver", control_plane._apiserver_args())
    wait_until(lambda: http_ok(f"{control_plane.server}/readyz", control_plane._tls), "kube-apiserver /readyz", [new], 120)


def test_watches_survive_an_api_server_restart(lmtj, kubelet, operator, control_plane):
    lmtj.create(job_manifest("outage"))
    pods = lmtj.wait_pods("outage", 2, attempt=1)
    _restart_api_server(control_plane)
    # Only events after the restart can move the job: the operator must have watched again.
    for pod in pods:
        kubelet.run(lmtj.namespace, pod.metadata.name)
    lmtj.wait_phase("outage", "Running", timeout=90)
    operator.excuse_denials_so_far()
    kubelet.exit(lmtj.namespace, "outage-0", 0)
    kubelet.exit(lmtj.namespace, "outage-1", 0)
    lmtj.wait_phase("outage", "Succeeded", timeout=60)
    assert operator.process.poll() is None, "the operator exited during the outage"


def health(process: OperatorProcess) -> tuple[int, str]:
    """/healthz's status code and body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{process.health_port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_healthz_fails_while_the_pod_watch_is_stuck_and_recovers_with_it(lmtj, kubelet, operator, operator_setup, control_plane):
    """The operator reaches the API server through a proxy that can stop passing bytes and keep
    every connection open: its watch is stuck, not broken. A pod annotated anew twice a second
    keeps the watch busy throughout, so only the stuck path can silence it."""
    kubeconfig, folder = operator_setup
    server = urllib.parse.urlsplit(control_plane.server)
    with FreezableProxy(server.hostname, server.port) as proxy:
        config = yaml.safe_load(kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
        proxied = folder / "proxied.kubeconfig"
        proxied.write_text(yaml.safe_dump(config))
        stuck = OperatorProcess(proxied, folder, ["--stall-seconds", "5", "--resync", "2"], identity="proxied-operator")
        operator.stop()
        beating = threading.Event()
        try:
            stuck.start()
            lmtj.create(job_manifest("beat", nodes=1, training={"steps": 10, "globalBatchSize": 4, "microBatchSize": 4}))
            (pod,) = lmtj.wait_pods("beat", 1, attempt=1)
            kubelet.run(lmtj.namespace, pod.metadata.name)

            def beat() -> None:
                count = 0
                while not beating.wait(0.5):
                    count += 1
                    lmtj.core.patch_namespaced_pod(pod.metadata.name, lmtj.namespace, {"metadata": {"annotations": {"beat": str(count)}}})

            threading.Thread(target=beat, daemon=True).start()
            wait_for(lambda: health(stuck)[0] == 200, "the proxied operator to be healthy")

            proxy.freeze()
            # Behind the frozen proxy the reconciles stall too, and either finding may come first.
            code, body = wait_for(lambda: (h := health(stuck))[0] == 503 and "the pod watch has shown nothing" in h[1] and h,
                                  "/healthz to fail, naming the stuck watch")
            assert stuck.process.poll() is None

            proxy.thaw()
            wait_for(lambda: health(stuck)[0] == 200, "/healthz to recover once the watch moves again", timeout=90)
            assert "Traceback" not in stuck.log(), stuck.log()[-5000:]
        finally:
            beating.set()
            stuck.stop()
            operator.start()
