"""The operator as the tests run it: a real `kubespeed operator` process under the shipped RBAC.

    def test_x(operator, namespace): ...        # one operator for the session, --all-namespaces

`manifests/rbac` is applied with `kubectl apply -k` (as a user would), and the
process authenticates with a token of the `kubespeed-operator` ServiceAccount
from the TokenRequest API, so every request it makes is authorised by exactly
the rules that ship: a missing rule shows as a 403 in its log, which
`assert_clean_log` checks with "no Traceback". tests/e2e imports this module too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubespeed import wiring
from kubespeed_cli.dev.cluster import ControlPlane
from kubespeed.ports import free_port
from kubespeed.spec import crd

REPO = Path(__file__).resolve().parents[2]
RBAC_DIR = REPO / "manifests" / "rbac"
OPERATOR_NAMESPACE = "kubespeed-system"
OPERATOR_ACCOUNT = "kubespeed-operator"
TOKEN_SECONDS = 4 * 3600
RBAC_DENIAL = f'User "system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}" cannot'


def install_operator_rbac(control_plane: ControlPlane) -> None:
    """The namespace, then `kubectl apply -k manifests/rbac`."""
    core = client.CoreV1Api(control_plane.api_client())
    try:
        core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    except ApiException as error:
        if error.status != 409:
            raise
    subprocess.run(["kubectl", "apply", "-k", str(RBAC_DIR)], env=control_plane.env(), check=True, capture_output=True, text=True)


def operator_kubeconfig(control_plane: ControlPlane, folder: Path) -> Path:
    """A kubeconfig whose only credential is a bound token of the operator's ServiceAccount."""
    core = client.CoreV1Api(control_plane.api_client())
    request = core.create_namespaced_service_account_token(
        OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, {"spec": {"expirationSeconds": TOKEN_SECONDS}}
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubespeed", "cluster": {"server": control_plane.server, "certificate-authority": str(control_plane.pki.ca.cert)}}],
        "users": [{"name": OPERATOR_ACCOUNT, "user": {"token": request.status.token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "kubespeed", "user": OPERATOR_ACCOUNT}}],
        "current-context": "operator",
    }
    path = folder / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _own_group_dying_with_parent() -> None:
    """In the child: its own process group (so kill() reaches all of it), SIGKILLed if the test process dies."""
    import ctypes

    os.setsid()
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class OperatorProcess:
    """`python -m kubespeed_cli operator ...` with its log in a file; started, killed and restarted by tests."""

    def __init__(self, kubeconfig: Path, folder: Path, extra_args: list[str] | None = None, identity: str = "test-operator"):
        self.kubeconfig = kubeconfig
        self.folder = folder
        self.identity = identity
        self.extra_args = extra_args or []
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log_path = folder / f"operator-{identity}.log"
        self.process: subprocess.Popen | None = None
        self._rbac_checked_from = 0

    def args(self) -> list[str]:
        return [
            sys.executable, "-m", "kubespeed_cli", "operator", "--all-namespaces",
            "--lease-namespace", OPERATOR_NAMESPACE, "--identity", self.identity,
            "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port),
            # Tests drive pods by the second: quick progress reads, timer reconciles and startup retries.
            "--progress-interval", "1", "--resync", "5", "--startup-retry", "2",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, wait_for_lease: bool = True, timeout: float = 60.0) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        env.pop("POD_NAMESPACE", None)
        log = open(self.log_path, "a")
        log.write(f"\n===== start {time.strftime('%H:%M:%S')}\n")
        log.flush()
        self.process = subprocess.Popen(self.args(), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=_own_group_dying_with_parent)
        log.close()
        try:
            self._wait_started(wait_for_lease, timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_started(self, wait_for_lease: bool, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        marker = "leading: Lease" if wait_for_lease else "/healthz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if wait_for_lease and self.log().rfind(marker) > self.log().rfind("===== start"):
                return
            if not wait_for_lease and self.healthy():
                return
            time.sleep(0.1)
        raise TimeoutError(f"the operator did not start within {timeout}s:\n{self.log()[-3000:]}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release, as when a node dies."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def excuse_denials_so_far(self) -> None:
        """A restarted API server refuses everyone until its RBAC cache is loaded; that is not a missing rule."""
        self._rbac_checked_from = len(self.log())

    def assert_clean_log(self) -> None:
        """No traceback and no request the shipped RBAC refused."""
        text = self.log()
        assert "Traceback" not in text, f"the operator logged a traceback:\n{text[-5000:]}"
        denials = [line for line in text[self._rbac_checked_from:].splitlines() if RBAC_DENIAL in line]
        assert not denials, "the shipped RBAC refused the operator something:\n" + "\n".join(denials[:5])


def install_crd(api_client: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Create the CRD, or replace an older one, and wait until the API server serves it (Established)."""
    extensions = client.ApiextensionsV1Api(api_client)
    body = crd.crd()
    try:
        extensions.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:
            raise
        current = extensions.read_custom_resource_definition(crd.CRD_NAME)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        extensions.replace_custom_resource_definition(crd.CRD_NAME, body)
    deadline = time.monotonic() + timeout
    while True:
        served = extensions.read_custom_resource_definition(crd.CRD_NAME)
        conditions = {c.type: c for c in served.status.conditions or []}
        established = conditions.get("Established")
        if established is not None and established.status == "True":
            return api_client.sanitize_for_serialization(served)
        if time.monotonic() > deadline:
            rejected = conditions.get("NamesAccepted")
            detail = f": {rejected.message}" if rejected is not None and rejected.status != "True" else ""
            raise TimeoutError(f"CRD {crd.CRD_NAME} was not Established within {timeout:.0f}s{detail}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def operator_setup(control_plane: ControlPlane) -> Iterator[tuple[Path, Path]]:
    """CRD and RBAC installed, a token kubeconfig written: (kubeconfig, folder for logs)."""
    install_crd(control_plane.api_client())
    install_operator_rbac(control_plane)
    with tempfile.TemporaryDirectory(prefix="kubespeed-operator-") as folder:
        yield operator_kubeconfig(control_plane, Path(folder)), Path(folder)


@pytest.fixture(scope="session")
def operator(operator_setup: tuple[Path, Path], gpu_nodes: list[str]) -> Iterator[OperatorProcess]:
    """One operator for the session, watching every namespace; tests may kill and restart it."""
    kubeconfig, folder = operator_setup
    process = OperatorProcess(kubeconfig, folder)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def job_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """A small LMTrainingJob: `spec` overrides a CPU-free default (gpu true, 2 nodes sharing
    the namespace's `CHECKPOINT_CLAIM`, which `shared_checkpoint_claim` makes)."""
    body: dict[str, Any] = {
        "image": "ghcr.io/kubespeed/kubespeed-trainer:0.1.0",
        "nodes": 2,
        "data": {"train": "builtin:tiny"},
        "training": {"steps": 10, "globalBatchSize": 8, "microBatchSize": 4},
        "checkpoint": {"claimName": CHECKPOINT_CLAIM},
    }
    body.update(spec)
    return {"apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}", "kind": wiring.KIND, "metadata": {"name": name}, "spec": body}


CHECKPOINT_CLAIM = "checkpoints"


def shared_checkpoint_claim(core: Any, namespace: str) -> None:
    """`CHECKPOINT_CLAIM` in `namespace`: ReadWriteMany and bound ahead to a volume of its own,
    as a provisioner would bind it, since the schema wants a gang of several nodes to share
    its checkpoints and the scheduler places no pod whose claim is unbound."""
    volume = f"ckpt-{namespace}"
    core.create_persistent_volume({
        "metadata": {"name": volume},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "", "claimRef": {"namespace": namespace, "name": CHECKPOINT_CLAIM},
            # Nothing runs in the pods of these tests (the fake kubelet only reports status).
            "hostPath": {"path": f"/var/lib/kubespeed-tests/{volume}"},
        },
    })  # fmt: skip
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": CHECKPOINT_CLAIM},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}},
    })  # fmt: skip


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane) -> Iterator[Any]:
    """Pod status driven by the tests as a kubelet would report it (kubelet.py)."""
    from kubelet import FakeKubelet

    fake = FakeKubelet(control_plane.api_client()).start()
    try:
        yield fake
    finally:
        fake.stop()


def wait_for(check: Any, what: str, timeout: float = 60.0, interval: float = 0.2, explain: Any = None) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what` and, if given, `explain()`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last saw {last!r}{detail}")


class JobClient:
    """LMTrainingJobs, their pods and Events in one namespace, as a user (cluster admin) sees them."""

    def __init__(self, control_plane: ControlPlane, namespace: str):
        self.api = control_plane.api_client()
        self.core = client.CoreV1Api(self.api)
        self.networking = client.NetworkingV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace = namespace
        self.group = (wiring.API_GROUP, wiring.API_VERSION)
        self.plural = wiring.PLURAL

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(*self.group, self.namespace, self.plural, manifest)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(*self.group, self.namespace, self.plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(*self.group, self.namespace, self.plural, name, {"spec": spec})

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def condition(self, name: str, ctype: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == ctype), None)

    def pods(self, name: str) -> list[Any]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{wiring.JOB_LABEL}={name}").items
        return sorted(pods, key=lambda p: p.metadata.name)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        events = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return [(e.type, e.reason, e.message) for e in sorted(events, key=lambda e: e.metadata.creation_timestamp)]

    def wait_phase(self, name: str, phase: str, timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(lambda: (self.status(name).get("phase") == phase) and self.status(name), f"{name} to be {phase}", timeout)

    def wait_pods(self, name: str, count: int, attempt: int, bound: bool = True, timeout: float = 60.0) -> list[Any]:
        """Exactly `count` live pods of the job, all of `attempt` (and bound to a node)."""
        def ready() -> list[Any] | None:
            pods = [p for p in self.pods(name) if p.metadata.deletion_timestamp is None]
            ok = len(pods) == count and all(p.metadata.labels[wiring.ATTEMPT_LABEL] == str(attempt) for p in pods)
            ok = ok and (not bound or all(p.spec.node_name for p in pods))
            return pods if ok else None

        return wait_for(ready, f"{count} pods of {name} attempt {attempt}", timeout)


def run_all(lmtj: JobClient, kubelet: Any, name: str, attempt: int, nodes: int = 2) -> list[Any]:
    """Wait for the attempt's pods to be bound, report them all Running, wait for the job to be Running."""
    pods = lmtj.wait_pods(name, nodes, attempt)
    for pod in pods:
        kubelet.run(lmtj.namespace, pod.metadata.name)
    lmtj.wait_phase(name, "Running")
    return pods


@pytest.fixture
def lmtj(control_plane: ControlPlane, namespace: str, operator: OperatorProcess, kubelet: Any) -> Iterator[JobClient]:
    """Jobs in the test's namespace (with its shared checkpoint claim), the session's operator running; its log stays clean."""
    jobs = JobClient(control_plane, namespace)
    shared_checkpoint_claim(jobs.core, namespace)
    yield jobs
    if operator.process is not None and operator.process.poll() is None:
        operator.assert_clean_log()
