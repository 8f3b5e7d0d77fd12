"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

    with ControlPlane() as cp:
        core = kubernetes.client.CoreV1Api(cp.api_client())
        cp.add_gpu_nodes(2)
        subprocess.run(["kubectl", "get", "nodes"], env=cp.env())

Configured the way kubeadm configures a cluster where it matters to an operator: RBAC and
Node authorization, the admission plugins a real cluster runs (PodSecurity included),
controllers acting under their own service accounts, bound service-account tokens. No
kubelet: pods are scheduled to nodes (see nodes.py) but nothing runs them.

Everything lives in one temp folder (certificates, kubeconfigs, etcd data, logs) that
`stop()` removes after stopping every process by PID. If the owner is killed outright,
the processes die with it (processes.py) and the next ControlPlane removes the folder.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from kubespeed_cli.dev import nodes, pki
from kubespeed.ports import free_port
from kubespeed_cli.dev.build import ensure_binaries, read_pins
from kubespeed_cli.dev.processes import (
    ControlPlaneError,
    Process,
    http_ok,
    spawn,
    stop,
    wait_until,
)

DIR_PREFIX = "kubespeed-cp-"
OWNER_FILE = "owner.pid"
START_ATTEMPTS = 3

ADMISSION_PLUGINS = (
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "NodeRestriction",
    "TaintNodesByCondition",
    "PodSecurity",
    "Priority",
    "DefaultTolerationSeconds",
    "DefaultStorageClass",
    "StorageObjectInUseProtection",
    "PersistentVolumeClaimResize",
    "RuntimeClass",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionWebhook",
    "ResourceQuota",
)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(*(free_port() for _ in range(5)))


def remove_stale_dirs(parent: Path | None = None) -> list[Path]:
    """Remove folders left by control planes whose owner process no longer exists."""
    removed = []
    for directory in Path(parent or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (FileNotFoundError, ValueError, NotADirectoryError):
            continue
        if not _alive(owner):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ControlPlane:
    def __init__(self, bin_dir: Path | None = None, ready_timeout: float = 300.0, extra_flags: dict[str, list[str]] | None = None) -> None:
        """`extra_flags`: more flags for a component by its binary's name (a benchmark varies one)."""
        self._bin_dir = bin_dir
        self.ready_timeout = ready_timeout
        self.extra_flags = extra_flags or {}
        self.processes: list[Process] = []
        self.dir: Path | None = None
        self._heartbeat: nodes.Heartbeat | None = None
        self._nodes_per_prefix: dict[str, int] = {}
        self.kubernetes_version = read_pins().kubernetes

    # ---- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._bin_dir = self._bin_dir or ensure_binaries()
        remove_stale_dirs()
        for attempt in range(1, START_ATTEMPTS + 1):
            self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
            (self.dir / OWNER_FILE).write_text(str(os.getpid()))
            try:
                self._start()
                return
            except ControlPlaneError as error:
                self.stop()
                # A free port can be taken by another session between our pick and the bind.
                if "address already in use" not in str(error) or attempt == START_ATTEMPTS:
                    raise
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop the heartbeat, then every process newest first (etcd last), then remove the folder."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        while self.processes:
            stop(self.processes.pop())
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _start(self) -> None:
        assert self.dir is not None
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.pki = pki.make_pki(self.dir / "pki")
        self.ports = Ports.pick()
        self.server = f"https://127.0.0.1:{self.ports.apiserver}"
        self.kubeconfig = pki.write_kubeconfig(self.dir / "admin.kubeconfig", self.server, self.pki.ca.cert, self.pki.admin)
        self._tls = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        self._tls.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))

        etcd = self._spawn("etcd", self._etcd_args())
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.ports.etcd_client}/health"), "etcd /health", [etcd], 60)
        apiserver = self._spawn("kube-apiserver", self._apiserver_args())
        wait_until(lambda: http_ok(f"{self.server}/readyz", self._tls), "kube-apiserver /readyz", [etcd, apiserver],
                   self.ready_timeout)  # fmt: skip
        manager = self._spawn("kube-controller-manager", self._controller_manager_args())
        scheduler = self._spawn("kube-scheduler", self._scheduler_args())
        serving = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        for process, port in ((manager, self.ports.controller_manager), (scheduler, self.ports.scheduler)):
            wait_until(lambda: http_ok(f"https://127.0.0.1:{port}/healthz", serving), f"{process.name} /healthz",
                       self.processes, self.ready_timeout)  # fmt: skip
        # The serviceaccount controller has run once the `default` account exists: from
        # then on pods can be created (the ServiceAccount admission plugin needs it).
        wait_until(lambda: http_ok(f"{self.server}/api/v1/namespaces/default/serviceaccounts/default", self._tls),
                   "the default ServiceAccount", self.processes, self.ready_timeout)  # fmt: skip

    def _spawn(self, name: str, args: list[str]) -> Process:
        assert self._bin_dir is not None
        process = spawn(name, [str(self._bin_dir / name), *args, *self.extra_flags.get(name, [])], self.logs)
        self.processes.append(process)
        return process

    # ---- component flags ---------------------------------------------------------------

    def _etcd_args(self) -> list[str]:
        assert self.dir is not None
        client, peer = f"http://127.0.0.1:{self.ports.etcd_client}", f"http://127.0.0.1:{self.ports.etcd_peer}"
        return [
            "--name=kubespeed",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kubespeed={peer}",
            # A throwaway cluster: durability on power loss buys nothing and fsync costs seconds.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p = self.pki
        return [
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The reconciler would publish the advertise address as the `kubernetes` Service's
            # endpoint and refuses a loopback one; nothing in-cluster dials it here (no kubelet).
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.ports.apiserver}",
            f"--tls-cert-file={p.serving.cert}",
            f"--tls-private-key-file={p.serving.key}",
            f"--client-ca-file={p.ca.cert}",
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={p.service_account_public_key}",
            f"--service-account-signing-key-file={p.service_account_key}",
            f"--service-cluster-ip-range={pki.SERVICE_CLUSTER_IP_RANGE}",
            f"--requestheader-client-ca-file={p.front_proxy_ca.cert}",
            f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.front_proxy_client.cert}",
            f"--proxy-client-key-file={p.front_proxy_client.key}",
            "--allow-privileged=true",
            "--profiling=false",
        ]

    def _component_kubeconfig(self, name: str, client: pki.KeyPair) -> Path:
        assert self.dir is not None
        return pki.write_kubeconfig(self.dir / f"{name}.kubeconfig", self.server, self.pki.ca.cert, client)

    def _serving_args(self, name: str, port: int, client: pki.KeyPair) -> list[str]:
        kubeconfig = self._component_kubeconfig(name, client)
        return [
            f"--kubeconfig={kubeconfig}",
            # Delegated authn/authz of their own /metrics; /healthz stays open to anyone.
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={self.pki.serving.cert}",
            f"--tls-private-key-file={self.pki.serving.key}",
            # One instance: no need to wait for a lease before doing anything.
            "--leader-elect=false",
        ]

    def _controller_manager_args(self) -> list[str]:
        p = self.pki
        return [
            *self._serving_args("kube-controller-manager", self.ports.controller_manager, p.controller_manager),
            # Every controller a default cluster runs (garbagecollector, namespace,
            # serviceaccount, serviceaccount-token, nodelifecycle, job, ...).
            "--controllers=*",
            # As kubeadm does: each controller acts under its own service account and RBAC role.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.service_account_key}",
            f"--root-ca-file={p.ca.cert}",
            f"--cluster-signing-cert-file={p.ca.cert}",
            f"--cluster-signing-key-file={p.ca.key}",
            f"--service-cluster-ip-range={pki.SERVICE_CLUSTER_IP_RANGE}",
        ]

    def _scheduler_args(self) -> list[str]:
        return self._serving_args("kube-scheduler", self.ports.scheduler, self.pki.scheduler)

    # ---- using it ----------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """The folder with kubectl and helm (and the components) built for this control plane."""
        assert self._bin_dir is not None
        return self._bin_dir

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess (kubectl, helm, the operator) that should talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _configuration(self) -> Any:
        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.pki.ca.cert)
        configuration.cert_file = str(self.pki.admin.cert)
        configuration.key_file = str(self.pki.admin.key)
        return configuration

    def api_client(self) -> Any:
        """A new `kubernetes.client.ApiClient` as cluster admin (system:masters)."""
        return client.ApiClient(self._configuration())

    def impersonate(self, namespace: str, service_account: str) -> Any:
        """An ApiClient that acts as the ServiceAccount: RBAC sees exactly what the account may do.

        The apiserver adds the account's groups (system:serviceaccounts, ...:<namespace>,
        system:authenticated) itself when only the user is impersonated.
        """
        api = self.api_client()
        api.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:{service_account}")
        return api

    def add_gpu_nodes(self, count: int, gpus: int = 8) -> list[str]:
        """Register `count` Ready nodes with `gpus` nvidia.com/gpu each, labelled
        nvidia.com/gpu.present=true and tainted nvidia.com/gpu=present:NoSchedule; wait until the
        scheduler may use them. Names continue across calls: gpu-node-0, gpu-node-1, ..."""
        return self.add_nodes(count, gpus, prefix="gpu-node")

    def add_nodes(self, count: int, gpus: int = 0, prefix: str = "node") -> list[str]:
        """Register `count` Ready nodes (64 CPUs, 512Gi, 110 pods; `gpus` GPUs if not 0) that a
        heartbeat keeps Ready until stop(); return their names once the scheduler may use them."""
        api = self.api_client()
        if self._heartbeat is None:
            self._heartbeat = nodes.Heartbeat(self.api_client())
        taken = self._nodes_per_prefix.get(prefix, 0)
        names = [f"{prefix}-{taken + i}" for i in range(count)]
        self._nodes_per_prefix[prefix] = taken + count
        for name in names:
            nodes.register(api, name, gpus, self.kubernetes_version)
            self._heartbeat.add(name)
        wait_until(lambda: all(nodes.schedulable(api, name) for name in names),
                   f"nodes {', '.join(names)} to be Ready without the not-ready taint", self.processes, 120)  # fmt: skip
        return names

    def logs_tail(self, lines: int = 40) -> str:
        """The last lines of every component's log, for a failing test's report."""
        return "\n".join(f"--- {p.name} (pid {p.pid}, running={p.running()}):\n{p.tail(lines)}" for p in self.processes)


__all__ = ["ControlPlane", "ControlPlaneError", "remove_stale_dirs"]
