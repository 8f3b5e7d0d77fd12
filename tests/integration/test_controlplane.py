"""The control plane the tests run against is a real one: schema validation, garbage collection,
scheduling with taints and extended resources, RBAC, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubespeed_cli.dev.build import read_pins
from kubespeed_cli.dev.cluster import ControlPlane, ControlPlaneError, remove_stale_dirs
from kubespeed_cli.dev.nodes import GPU_RESOURCE, GPU_TAINT

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.integration
def test_server_and_kubectl_report_the_pinned_version(control_plane: ControlPlane) -> None:
    result = subprocess.run(
        ["kubectl", "version", "-o", "json"], env=control_plane.env(), capture_output=True, text=True, check=True
    )
    versions = json.loads(result.stdout)
    pinned = read_pins().kubernetes
    assert versions["clientVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["gitVersion"] == pinned
    helm = subprocess.run(["helm", "version", "--short"], env=control_plane.env(), capture_output=True, text=True, check=True)
    assert helm.stdout.startswith(read_pins().helm)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("spec", "field", "complaint"),
    [
        pytest.param({"replicas": "three"}, "spec.replicas", "must be of type integer", id="wrong-type"),
        pytest.param({"replicas": 0}, "spec.replicas", "greater than or equal to 1", id="below-minimum"),
        pytest.param({"replicas": 1, "size": "huge"}, "spec.size", "Unsupported value", id="not-in-enum"),
        pytest.param({"size": "small"}, "spec.replicas", "Required value", id="required-missing"),
    ],
)
def test_api_server_refuses_an_object_that_breaks_the_crd_schema_naming_the_field(
    create_widget: Callable[..., dict[str, Any]], namespace: str, spec: dict[str, Any], field: str, complaint: str
) -> None:
    with pytest.raises(ApiException) as refused:
        create_widget(namespace, spec)
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert field in message and complaint in message, message


@pytest.mark.integration
def test_api_server_accepts_an_object_that_fits_the_crd_schema(
    create_widget: Callable[..., dict[str, Any]], namespace: str
) -> None:
    created = create_widget(namespace, {"replicas": 2, "size": "large"})
    assert created["spec"] == {"replicas": 2, "size": "large"}


@pytest.mark.integration
def test_configmap_whose_owner_is_deleted_is_garbage_collected(control_plane: ControlPlane, namespace: str) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "dependent", "ownerReferences": [reference]}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    eventually(dependent_gone, "the garbage collector to delete the dependent ConfigMap", timeout=90)
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


def gpu_pod(name: str, tolerate: bool) -> dict[str, Any]:
    tolerations = [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}] if tolerate else []
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": {"limits": {GPU_RESOURCE: "1"}}}
            ],
            "tolerations": tolerations,
        },
    }


def scheduled_condition(core: client.CoreV1Api, name: str, namespace: str) -> Any:
    pod = core.read_namespaced_pod(name, namespace)
    return next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)


@pytest.mark.integration
def test_gpu_pod_that_tolerates_the_gpu_taint_is_bound_to_a_gpu_node(
    control_plane: ControlPlane, gpu_nodes: list[str], namespace: str
) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    core.create_namespaced_pod(namespace, gpu_pod("tolerates", tolerate=True))

    node = eventually(lambda: core.read_namespaced_pod("tolerates", namespace).spec.node_name, "the pod to be bound")

    assert node in gpu_nodes
    assert scheduled_condition(core, "tolerates", namespace).status == "True"


@pytest.mark.integration
def test_gpu_pod_without_the_toleration_stays_pending_with_the_schedulers_reason(
    control_plane: ControlPlane, gpu_nodes: list[str], namespace: str
) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    core.create_namespaced_pod(namespace, gpu_pod("intolerant", tolerate=False))

    condition = eventually(
        lambda: scheduled_condition(core, "intolerant", namespace), "the scheduler to report on the pod"
    )

    pod = core.read_namespaced_pod("intolerant", namespace)
    assert (pod.status.phase, pod.spec.node_name) == ("Pending", None)
    assert (condition.status, condition.reason) == ("False", "Unschedulable")
    assert "untolerated taint" in condition.message, condition.message


@pytest.mark.integration
def test_fake_gpu_nodes_renew_their_lease_like_a_kubelet(control_plane: ControlPlane, gpu_nodes: list[str]) -> None:
    coordination = client.CoordinationV1Api(control_plane.api_client())

    def renew_times() -> list[Any]:
        return [coordination.read_namespaced_lease(name, "kube-node-lease").spec.renew_time for name in gpu_nodes]

    first = renew_times()
    eventually(lambda: all(now > then for now, then in zip(renew_times(), first)), "every node's lease to be renewed", timeout=40)


@pytest.mark.integration
def test_pod_security_admission_enforces_the_namespace_level(control_plane: ControlPlane, namespace: str) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    privileged = {
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                 "securityContext": {"privileged": True}}]},
    }  # fmt: skip
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, privileged)
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in json.loads(refused.value.body)["message"]


@pytest.mark.integration
def test_service_account_without_permission_is_forbidden(control_plane: ControlPlane, namespace: str) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "worker"}})
    as_worker = client.CoreV1Api(control_plane.impersonate(namespace, "worker"))

    with pytest.raises(ApiException) as refused:
        as_worker.list_namespaced_secret(namespace)

    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert f'"system:serviceaccount:{namespace}:worker" cannot list resource "secrets"' in message, message


@pytest.mark.integration
def test_service_account_may_do_what_its_role_grants_and_nothing_more(
    control_plane: ControlPlane, namespace: str
) -> None:
    api = control_plane.api_client()
    client.CoreV1Api(api).create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    })  # fmt: skip
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    })  # fmt: skip
    as_reader = client.CoreV1Api(control_plane.impersonate(namespace, "reader"))

    def can_list() -> bool:
        try:
            as_reader.list_namespaced_config_map(namespace)
        except ApiException as error:
            if error.status == 403:  # the authorizer's informer has not seen the binding yet
                return False
            raise
        return True

    eventually(can_list, "the RoleBinding to take effect", timeout=30)
    with pytest.raises(ApiException) as refused:
        as_reader.create_namespaced_config_map(namespace, {"metadata": {"name": "nope"}})
    assert refused.value.status == 403


def children_of(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.integration
def test_dev_cluster_prints_the_exports_and_ctrl_c_stops_every_process_and_removes_its_folder(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "kubespeed_cli", "dev", "cluster", "--gpu-nodes", "1"]
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as err:
        # Started as a shell starts a command in the background (`&`): with SIGINT ignored.
        # Ctrl-C must stop it all the same.
        dev = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert dev.stdout is not None
        kubeconfig_line, path_line = dev.stdout.readline(), dev.stdout.readline()
        assert kubeconfig_line.startswith("export KUBECONFIG="), stderr.read_text()
        assert path_line.startswith("export PATH=")
        assert path_line.strip().endswith(":$PATH")
        kubeconfig = Path(kubeconfig_line.strip().split("=", 1)[1])
        bin_dir = path_line.strip().split("=", 1)[1].rsplit(":", 1)[0]
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        nodes = subprocess.run(["kubectl", "get", "nodes", "-o", "name"], env=env, capture_output=True, text=True)
        assert nodes.stdout.split() == ["node/gpu-node-0"], nodes.stderr
        assert subprocess.run(["helm", "list", "-A"], env=env, capture_output=True).returncode == 0
        components = children_of(dev.pid)
        assert len(components) == 4 and all(alive(pid) for pid in components)

        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    assert not any(alive(pid) for pid in components)
    assert not kubeconfig.parent.exists()


class _BrokenApiserver(ControlPlane):
    def _apiserver_args(self) -> list[str]:
        return [*super()._apiserver_args(), "--no-such-flag"]


@pytest.mark.integration
def test_failed_start_raises_with_the_log_and_leaves_nothing(control_plane: ControlPlane) -> None:
    broken = _BrokenApiserver(control_plane.bin_dir)
    with pytest.raises(ControlPlaneError, match="unknown flag: --no-such-flag"):
        broken.start()
    assert broken.processes == [] and broken.dir is None


def test_components_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    # A parent that spawns a child the way the control plane does, then is SIGKILLed.
    parent_code = (
        "import sys, time; from pathlib import Path; from kubespeed_cli.dev.processes import spawn; "
        "p = spawn('sleeper', [sys.executable, '-c', 'import time; time.sleep(600)'], Path(sys.argv[1])); "
        "print(p.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)

    parent.kill()
    parent.wait()

    eventually(lambda: not alive(child), "the orphaned child to die", timeout=10)


def test_folders_of_dead_owners_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    stale, live = tmp_path / "kubespeed-cp-stale", tmp_path / "kubespeed-cp-live"
    for folder, owner in ((stale, dead_owner.pid), (live, os.getpid())):
        folder.mkdir()
        (folder / "owner.pid").write_text(str(owner))

    assert remove_stale_dirs(tmp_path) == [stale]
    assert live.is_dir() and not stale.exists()
