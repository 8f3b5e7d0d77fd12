"""The test node agent runs pods like a kubelet: real control plane, real scheduler, real processes.

Pods are plain Python one-liners run by the trainer image (mapped to this machine's
kubespeed installation); what they print or write is what a pod of the operator's
would see.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent import NodeAgent
from agent.agent import DIR_PREFIX, remove_stale_dirs
from agent.images import chart_trainer_image as trainer_image
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubespeed import wiring
from kubespeed_cli.dev.cluster import ControlPlane
from kubespeed_cli.dev.nodes import GPU_TAINT

pytestmark = [pytest.mark.e2e]

GPU_TOLERATION = {"key": GPU_TAINT["key"], "operator": "Exists", "effect": GPU_TAINT["effect"]}
WAIT_SECONDS = 90


def pod_manifest(name: str, script: str, *, image: str | None = None, labels: dict[str, str] | None = None,
                 env: list[dict[str, Any]] | None = None, mounts: list[dict[str, Any]] | None = None,
                 volumes: list[dict[str, Any]] | None = None, node: str | None = None, subdomain: str | None = None,
                 restart: str = "Never", grace: int | None = None) -> dict[str, Any]:  # fmt: skip
    """A pod that runs `script` with the image's python; the scheduler places it unless `node` is given."""
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "tolerations": [GPU_TOLERATION],
        "containers": [{
            "name": "main",
            "image": image or trainer_image(),
            "command": ["python", "-c", textwrap.dedent(script)],
            "env": env or [],
            "volumeMounts": mounts or [],
        }],
        "volumes": volumes or [],
    }  # fmt: skip
    if node:
        spec["nodeName"] = node
    if subdomain:
        spec["hostname"], spec["subdomain"] = name, subdomain
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def wait_for(core: client.CoreV1Api, namespace: str, name: str, what: str,
             done: Callable[[client.V1Pod], bool], agent: NodeAgent) -> client.V1Pod:  # fmt: skip
    deadline = time.monotonic() + WAIT_SECONDS
    pod = None
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, namespace)
        if done(pod):
            return pod
        time.sleep(0.2)
    pytest.fail(f"pod {name} did not become {what}; status: {pod.status if pod else None}\n"
                f"logs: {agent.logs(namespace, name)}")  # fmt: skip


def finished(pod: client.V1Pod) -> bool:
    return pod.status.phase in ("Succeeded", "Failed")


def wait_gone(core: client.CoreV1Api, namespace: str, name: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return
            raise
        time.sleep(0.2)
    pytest.fail(f"pod {name} was not removed after its deletion")


@pytest.fixture
def core(control_plane: ControlPlane) -> client.CoreV1Api:
    return client.CoreV1Api(control_plane.api_client())


def test_pod_sees_its_env_files_host_user_and_a_claim_shared_with_the_next_pod(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str, gpu_nodes: list[str]
) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "wiring"},
                                                  "data": {wiring.HOSTFILE_KEY: "job-0.job slots=2\n"}})  # fmt: skip
    claim = wiring.checkpoint_claim_name("job")
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    })  # fmt: skip
    volumes = [{"name": "config", "configMap": {"name": "wiring"}},
               {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim}},
               {"name": "shm", "emptyDir": {"medium": "Memory"}}]  # fmt: skip
    mounts = [{"name": "config", "mountPath": wiring.CONFIG_DIR, "readOnly": True},
              {"name": "checkpoints", "mountPath": wiring.CHECKPOINT_DIR_DEFAULT},
              {"name": "shm", "mountPath": wiring.SHM_DIR}]  # fmt: skip
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
           {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{wiring.NODE_RANK_LABEL}']"}}},
           {"name": "GREETING", "value": "hello from $(POD_NAME)"}]  # fmt: skip
    writer = """
        import json, os, socket
        with open("/checkpoints/shared.txt", "w") as out:
            out.write("written by " + os.environ["POD_NAME"])
        with open("/dev/shm/scratch", "w") as out:
            out.write("memory")
        try:
            open("/etc/kubespeed/new", "w")
            config_writable = True
        except OSError:
            config_writable = False
        print(json.dumps({"env": {k: os.environ.get(k) for k in ("POD_NAME", "POD_NAMESPACE", "POD_IP", "NODE_NAME", "RANK", "GREETING")},
                          "hostfile": open("/etc/kubespeed/hostfile").read(), "hostname": socket.gethostname(),
                          "uid": os.getuid(), "cwd": os.getcwd(), "pid": os.getpid(), "config_writable": config_writable}))
    """
    labels = {wiring.NODE_RANK_LABEL: "0"}
    core.create_namespaced_pod(namespace, pod_manifest("writer", writer, labels=labels, env=env, mounts=mounts,
                                                       volumes=volumes, node=gpu_nodes[0]))  # fmt: skip
    pod = wait_for(core, namespace, "writer", "finished", finished, node_agent)
    assert pod.status.phase == "Succeeded", node_agent.logs(namespace, "writer")
    seen = json.loads(node_agent.logs(namespace, "writer").strip().splitlines()[-1])
    assert seen["env"] == {"POD_NAME": "writer", "POD_NAMESPACE": namespace, "POD_IP": pod.status.pod_ip,
                           "NODE_NAME": gpu_nodes[0], "RANK": "0", "GREETING": "hello from writer"}  # fmt: skip
    assert seen["hostfile"] == "job-0.job slots=2\n"
    assert seen["hostname"] == "writer"
    assert (seen["uid"], seen["cwd"], seen["pid"]) == (wiring.TRAINER_UID, wiring.WORK_DIR, 1)
    assert seen["config_writable"] is False
    assert not Path(wiring.CONFIG_DIR).exists(), "the pod's mount points must not appear on the machine"

    reader = 'print(open("/checkpoints/shared.txt").read())'
    core.create_namespaced_pod(namespace, pod_manifest("reader", reader, mounts=mounts[1:2], volumes=volumes[1:2],
                                                       node=gpu_nodes[1]))  # fmt: skip
    pod = wait_for(core, namespace, "reader", "finished", finished, node_agent)
    assert pod.status.phase == "Succeeded"
    assert node_agent.logs(namespace, "reader").strip() == "written by writer"


SERVER = """
    import socket
    server = socket.create_server(("0.0.0.0", {port}))
    for _ in range(3):  # one client connection per DNS name form
        connection, _ = server.accept()
        connection.sendall(socket.gethostname().encode())
        connection.close()
"""
CLIENT = """
    import socket, time
    replies = []
    for name in ("{peer}.{job}", "{peer}.{job}.{namespace}.svc", "{peer}.{job}.{namespace}.svc.cluster.local"):
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection((name, {port}), timeout=5) as connection:
                    replies.append(connection.recv(100).decode())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    print(" ".join(replies))
"""


def test_pods_of_a_job_resolve_each_other_and_two_jobs_use_the_same_port(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    jobs = ("job-a", "job-b")
    for job in jobs:
        core.create_namespaced_service(namespace, {
            "metadata": {"name": job},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {wiring.JOB_LABEL: job},
                     "ports": [{"name": "rendezvous", "port": wiring.MASTER_PORT}]},
        })  # fmt: skip
        labels = {wiring.JOB_LABEL: job}
        server = pod_manifest(wiring.pod_name(job, 0), SERVER.format(port=wiring.MASTER_PORT),
                              labels=labels, subdomain=job)  # fmt: skip
        peer_client = pod_manifest(wiring.pod_name(job, 1), CLIENT.format(peer=wiring.pod_name(job, 0), job=job,
                                   namespace=namespace, port=wiring.MASTER_PORT), labels=labels, subdomain=job)  # fmt: skip
        core.create_namespaced_pod(namespace, server)
        core.create_namespaced_pod(namespace, peer_client)
    for job in jobs:
        for rank in (0, 1):
            pod = wait_for(core, namespace, wiring.pod_name(job, rank), "finished", finished, node_agent)
            assert pod.status.phase == "Succeeded", node_agent.logs(namespace, wiring.pod_name(job, rank))
        server_name = wiring.pod_name(job, 0)
        assert node_agent.logs(namespace, wiring.pod_name(job, 1)).split() == [server_name] * 3


EXIT_CASES = [
    ("exit-zero-succeeds", 0, "Succeeded", "Completed"),
    ("exit-three-fails", 3, "Failed", "Error"),
]


@pytest.mark.parametrize(("case", "code", "phase", "reason"), EXIT_CASES, ids=[c[0] for c in EXIT_CASES])
def test_exit_code_decides_the_phase(core: client.CoreV1Api, node_agent: NodeAgent, namespace: str,
                                     case: str, code: int, phase: str, reason: str) -> None:  # fmt: skip
    core.create_namespaced_pod(namespace, pod_manifest(case, f"raise SystemExit({code})"))
    pod = wait_for(core, namespace, case, "finished", finished, node_agent)
    assert pod.status.phase == phase
    state = pod.status.container_statuses[0]
    assert (state.state.terminated.exit_code, state.state.terminated.reason) == (code, reason)
    assert state.restart_count == 0
    assert pod.status.pod_ip and pod.status.start_time


# (case, the container's termination message settings, its script, the message the pod's status carries)
MESSAGE_CASES = [
    ("the file at the default path", {}, "open('/dev/termination-log', 'w').write('rank 1: out of data'); raise SystemExit(65)",
     "rank 1: out of data"),
    ("the file at a path of its own", {"terminationMessagePath": "/tmp/why"},
     "open('/tmp/why', 'w').write('custom'); raise SystemExit(3)", "custom"),
    ("the file even on success", {}, "open('/dev/termination-log', 'w').write('done at step 9')", "done at step 9"),
    ("an empty file falls back to the log's end on failure", {"terminationMessagePolicy": "FallbackToLogsOnError"},
     "print('\\n'.join(f'line {i}' for i in range(100))); raise SystemExit(2)", "\n".join(f"line {i}" for i in range(20, 100)) + "\n"),
    ("no fallback under the default policy", {}, "print('only in the log'); raise SystemExit(2)", None),
    ("no fallback on success", {"terminationMessagePolicy": "FallbackToLogsOnError"}, "print('only in the log')", None),
]


@pytest.mark.parametrize(("case", "settings", "script", "message"), MESSAGE_CASES, ids=[c[0].replace(" ", "-") for c in MESSAGE_CASES])
def test_termination_message_is_the_containers_file_or_its_logs_end(core: client.CoreV1Api, node_agent: NodeAgent, namespace: str,
                                                                    case: str, settings: dict[str, str], script: str, message: str | None) -> None:  # fmt: skip
    name = f"message-{secrets.token_hex(3)}"
    manifest = pod_manifest(name, script)
    manifest["spec"]["containers"][0].update(settings)
    # Written as the trainer is: a user without root, on a read-only root filesystem.
    manifest["spec"]["securityContext"] = {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True}
    manifest["spec"]["containers"][0]["securityContext"] = {"readOnlyRootFilesystem": True}
    core.create_namespaced_pod(namespace, manifest)
    pod = wait_for(core, namespace, name, "finished", finished, node_agent)
    assert pod.status.container_statuses[0].state.terminated.message == message, f"{case}: {node_agent.logs(namespace, name)}"


def test_on_failure_restarts_the_container_in_place(core: client.CoreV1Api, node_agent: NodeAgent, namespace: str) -> None:
    script = """
        import os
        path = "/scratch/attempts"
        count = int(open(path).read()) + 1 if os.path.exists(path) else 1
        open(path, "w").write(str(count))
        raise SystemExit(0 if count == 3 else 5)
    """
    manifest = pod_manifest("flaky", script, restart="OnFailure", volumes=[{"name": "scratch", "emptyDir": {}}],
                            mounts=[{"name": "scratch", "mountPath": "/scratch"}])  # fmt: skip
    core.create_namespaced_pod(namespace, manifest)
    pod = wait_for(core, namespace, "flaky", "finished", finished, node_agent)
    state = pod.status.container_statuses[0]
    assert pod.status.phase == "Succeeded"
    assert state.restart_count == 2
    assert state.last_state.terminated.exit_code == 5


DELETION_CASES = [
    ("handles-sigterm", "signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM', flush=True), sys.exit(0)))",
     30, "ready\ngot SIGTERM\n"),
    # One that outlives SIGTERM is SIGKILLed when the grace period ends.
    ("ignores-sigterm-is-killed", "signal.signal(signal.SIGTERM, signal.SIG_IGN)", 1, "ready\n"),
]


def test_init_containers_run_to_completion_before_the_main_container(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    manifest = pod_manifest("initialized", 'print(open("/shared/greeting").read())',
                            volumes=[{"name": "shared", "emptyDir": {}}], mounts=[{"name": "shared", "mountPath": "/shared"}])  # fmt: skip
    manifest["spec"]["initContainers"] = [{
        "name": "prepare",
        "image": trainer_image(),
        "command": ["python", "-c", 'open("/shared/greeting", "w").write("prepared by init")'],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
    }]  # fmt: skip
    core.create_namespaced_pod(namespace, manifest)
    pod = wait_for(core, namespace, "initialized", "finished", finished, node_agent)
    assert pod.status.phase == "Succeeded"
    assert pod.status.init_container_statuses[0].state.terminated.reason == "Completed"
    assert node_agent.logs(namespace, "initialized", "main").strip() == "prepared by init"


@pytest.mark.parametrize(("case", "handler", "grace", "expected_log"), DELETION_CASES, ids=[c[0] for c in DELETION_CASES])
def test_deletion_sends_sigterm_then_kills_after_the_grace_period(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str, case: str, handler: str, grace: int, expected_log: str
) -> None:
    script = f"""
        import signal, sys, time
        {handler}
        print("ready", flush=True)
        time.sleep(600)
        print("slept to the end", flush=True)
    """
    core.create_namespaced_pod(namespace, pod_manifest(case, script, grace=grace))
    wait_for(core, namespace, case, "Running", lambda p: p.status.phase == "Running", node_agent)
    deadline = time.monotonic() + WAIT_SECONDS
    while "ready" not in node_agent.logs(namespace, case) and time.monotonic() < deadline:
        time.sleep(0.1)
    core.delete_namespaced_pod(case, namespace)
    wait_gone(core, namespace, case)
    assert node_agent.logs(namespace, case) == expected_log


def test_unknown_image_waits_in_err_image_pull(core: client.CoreV1Api, node_agent: NodeAgent, namespace: str) -> None:
    image = "registry.invalid/not-the-trainer:1"
    core.create_namespaced_pod(namespace, pod_manifest("unknown-image", "print('never')", image=image))

    def pulling_failed(pod: client.V1Pod) -> bool:
        statuses = pod.status.container_statuses or []
        return bool(statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason == "ErrImagePull")

    pod = wait_for(core, namespace, "unknown-image", "ErrImagePull", pulling_failed, node_agent)
    assert pod.status.phase == "Pending"
    assert image in pod.status.container_statuses[0].state.waiting.message


def test_missing_claim_keeps_the_pod_pending_with_failed_mount(
    core: client.CoreV1Api, node_agent: NodeAgent, namespace: str, gpu_nodes: list[str]
) -> None:
    manifest = pod_manifest("no-claim", "print('never')", node=gpu_nodes[0],
                            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "absent"}}],
                            mounts=[{"name": "data", "mountPath": "/data"}])  # fmt: skip
    core.create_namespaced_pod(namespace, manifest)
    deadline = time.monotonic() + WAIT_SECONDS
    events: list[client.CoreV1Event] = []
    while not events and time.monotonic() < deadline:
        events = [e for e in core.list_namespaced_event(namespace).items
                  if e.involved_object.name == "no-claim" and e.reason == "FailedMount"]  # fmt: skip
        time.sleep(0.2)
    assert events and '"absent" not found' in events[0].message
    pod = core.read_namespaced_pod("no-claim", namespace)
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"


def _host_network() -> str:
    return "".join(subprocess.run(["ip", "-o", *args], capture_output=True, text=True, check=True).stdout
                   for args in (["link"], ["addr"], ["route"], ["rule"]))  # fmt: skip


def _namespace_holders(inode: int) -> list[str]:
    """Every /proc entry (a process's namespace, an open descriptor) that refers to net:[inode]."""
    needle = f"net:[{inode}]"
    holders = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        links = [f"/proc/{pid}/ns/net"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            try:
                if os.readlink(link) == needle:
                    holders.append(link)
            except OSError:
                pass
    return holders


def test_stopping_the_agent_leaves_nothing_behind_and_the_machine_network_untouched(
    control_plane: ControlPlane, core: client.CoreV1Api, namespace: str
) -> None:
    # Its own agent and an unschedulable node of its own: the module's agent is not disturbed.
    node = f"agent-cleanup-{secrets.token_hex(3)}"
    core.create_node({"metadata": {"name": node}, "spec": {"unschedulable": True, "taints": [GPU_TAINT]}})
    network_before, hosts_before = _host_network(), Path("/etc/hosts").read_bytes()
    agent = NodeAgent(control_plane.api_client(), [node], [trainer_image()])
    try:
        agent.start()
        core.create_namespaced_pod(namespace, pod_manifest(
            "sleeper", "import time; print('ready', flush=True); time.sleep(600)", node=node,
            volumes=[{"name": "shm", "emptyDir": {"medium": "Memory"}}], mounts=[{"name": "shm", "mountPath": "/dev/shm"}]))  # fmt: skip
        wait_for(core, namespace, "sleeper", "Running", lambda p: p.status.phase == "Running", agent)
        pids = agent.pids()
        assert pids
        node_netns = os.stat(agent.network.path).st_ino  # type: ignore[union-attr]
        pod_netns = os.stat(f"/proc/{pids[0]}/ns/net").st_ino
        assert pod_netns != os.stat("/proc/self/ns/net").st_ino
        assert _host_network() == network_before
    finally:
        agent.stop()
        core.delete_node(node)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _namespace_holders(node_netns) == []
    assert _namespace_holders(pod_netns) == []
    assert not agent.work_dir.exists() and not agent.shm_dir.exists()
    assert str(agent.work_dir) not in Path("/proc/self/mountinfo").read_text()
    assert (_host_network(), Path("/etc/hosts").read_bytes()) == (network_before, hosts_before)


def test_folders_of_an_agent_that_died_are_removed_by_the_next(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{DIR_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{DIR_PREFIX}{os.getpid()}-def"
    for folder in (stale, live):
        (folder / "pods").mkdir(parents=True)
    assert remove_stale_dirs(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


def test_the_node_namespace_reaches_pod_ips_and_the_api_server(
    control_plane: ControlPlane, core: client.CoreV1Api, node_agent: NodeAgent, namespace: str
) -> None:
    """What the operator needs: the API server at the kubeconfig's address and rank 0's metrics at its pod IP."""
    core.create_namespaced_pod(namespace, pod_manifest("metrics", f"""
        import http.server
        class Metrics(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"kubespeed_step 7\\n")
        http.server.HTTPServer(("0.0.0.0", {wiring.METRICS_PORT}), Metrics).serve_forever()
    """, grace=1))  # fmt: skip
    pod = wait_for(core, namespace, "metrics", "Running", lambda p: p.status.phase == "Running", node_agent)
    probe = f"""
import time, urllib.request
url = "http://{pod.status.pod_ip}:{wiring.METRICS_PORT}{wiring.METRICS_PATH}"
for _ in range(100):
    try:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        break
    except OSError:
        time.sleep(0.2)
print(body.strip())
"""
    kubectl = subprocess.run(node_agent.network.command([str(control_plane.bin_dir / "kubectl"), "get", "pod", "metrics",  # type: ignore[union-attr]
                             "-n", namespace, "-o", "jsonpath={.status.podIP}"]), env=control_plane.env(),
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert kubectl.stdout == pod.status.pod_ip, kubectl.stderr
    metrics = subprocess.run(node_agent.network.command([sys.executable, "-c", probe]),  # type: ignore[union-attr]
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert metrics.stdout.strip() == "kubespeed_step 7", metrics.stderr
    core.delete_namespaced_pod("metrics", namespace)
    wait_gone(core, namespace, "metrics")
