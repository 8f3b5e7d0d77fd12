"""Fake nodes: Node objects that look like a kubelet registered them, GPU nodes by default.

There is no kubelet, so the scheduler binds pods to these nodes and nothing runs them
(tests/e2e adds an agent for that). The node lifecycle controller stays on, as in a real
cluster: it removes the `node.kubernetes.io/not-ready` taint the apiserver puts on every
new node once the node reports Ready, and would mark the node unreachable if its Lease
went stale. A heartbeat thread renews each node's Lease, and now and then its Ready
condition, as a kubelet does, so the nodes stay schedulable for as long as the control
plane runs.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from kubernetes import client

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
# The taint GPU node pools carry (GKE, AKS and the NVIDIA GPU operator's docs use this key),
# so only pods that ask for GPUs land there.
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
# Well inside the controller's 50 s node-monitor grace period, like the kubelet's 10 s.
HEARTBEAT_SECONDS = 10.0
# The kubelet's nodeStatusReportFrequency: with a Lease, the Ready condition's heartbeat is only a backup.
NODE_STATUS_SECONDS = 300.0
# Every node beats on its own, as kubelets do: beating 80 nodes one after another through an API
# server busy with thousands of pods took longer than the grace period, and the node lifecycle
# controller marked nodes unreachable and their pods not Ready (bench/operator_scale.py at 1,000 x 8).
HEARTBEAT_THREADS = 8

log = logging.getLogger(__name__)


def _now(micro: bool = True) -> str:
    """RFC 3339 in UTC; Lease times are MicroTime, condition times whole seconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def node(name: str, gpus: int) -> dict[str, Any]:
    """A node as its kubelet registers it; with `gpus`, labelled and tainted as GPU nodes are."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    if gpus:
        labels |= {GPU_PRESENT_LABEL: "true", "nvidia.com/gpu.count": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [dict(GPU_TAINT)] if gpus else []},
    }


def node_status(gpus: int, kubelet_version: str, cpu: str = "64", memory: str = "512Gi", pods: int = 110) -> dict[str, Any]:
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods), "ephemeral-storage": "1Ti"}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
    return {
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions(),
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": kubelet_version,
                "containerRuntimeVersion": "kubespeed-fake://0",
                "osImage": "kubespeed fake GPU node",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
        }
    }


# What a healthy kubelet reports: (type, status, reason).
HEALTHY_CONDITIONS = (
    ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID"),
    ("Ready", "True", "KubeletReady"),
)


def conditions() -> list[dict[str, str]]:
    now = _now(micro=False)
    return [
        {"type": kind, "status": status, "reason": reason, "message": f"fake node: {reason}",
         "lastHeartbeatTime": now, "lastTransitionTime": now}
        for kind, status, reason in HEALTHY_CONDITIONS
    ]  # fmt: skip


def lease(name: str, node_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": NODE_LEASE_NAMESPACE,
            # As the kubelet does: the lease goes when the node does.
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}],
        },
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": _now()},
    }


def register(api_client: Any, name: str, gpus: int, kubelet_version: str) -> None:
    core = client.CoreV1Api(api_client)
    created = core.create_node(node(name, gpus))
    core.patch_node_status(name, node_status(gpus, kubelet_version))
    client.CoordinationV1Api(api_client).create_namespaced_lease(NODE_LEASE_NAMESPACE, lease(name, created.metadata.uid))


def renew_lease(api_client: Any, name: str) -> None:
    client.CoordinationV1Api(api_client).patch_namespaced_lease(
        name, NODE_LEASE_NAMESPACE, {"spec": {"renewTime": _now()}}
    )


def report_ready(api_client: Any, name: str) -> None:
    # A strategic merge by condition type: only the heartbeat moves, the transition times stay.
    now = _now(micro=False)
    beats = [{"type": kind, "status": status, "lastHeartbeatTime": now} for kind, status, _ in HEALTHY_CONDITIONS]
    client.CoreV1Api(api_client).patch_node_status(name, {"status": {"conditions": beats}})


def schedulable(api_client: Any, name: str) -> bool:
    """Ready, and no taint left but the GPU one (the apiserver's not-ready taint is gone)."""
    current = client.CoreV1Api(api_client).read_node(name)
    taints = {taint.key for taint in current.spec.taints or []} - {GPU_TAINT["key"]}
    ready = any(c.type == "Ready" and c.status == "True" for c in current.status.conditions or [])
    return ready and not taints


class Heartbeat:
    """Renews the nodes' Leases (and every NODE_STATUS_SECONDS their Ready conditions) until stopped."""

    def __init__(self, api_client: Any, interval: float = HEARTBEAT_SECONDS) -> None:
        self._api_client = api_client
        self._interval = interval
        self._names: list[str] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubespeed-node-heartbeat", daemon=True)

    def add(self, name: str) -> None:
        with self._lock:
            self._names.append(name)
        if not self._thread.is_alive() and not self._stopped.is_set():
            self._thread.start()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._names)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        reported = time.monotonic()
        with ThreadPoolExecutor(HEARTBEAT_THREADS, thread_name_prefix="kubespeed-node-heartbeat") as pool:
            while not self._stopped.wait(self._interval):
                beat = renew_lease
                if time.monotonic() - reported >= NODE_STATUS_SECONDS:
                    beat, reported = self._beat_and_report, time.monotonic()
                # Each round waits for its beats, so a slow API server is never sent a backlog.
                list(pool.map(lambda name: self._safely(beat, name), self.names()))

    def _beat_and_report(self, api_client: Any, name: str) -> None:
        renew_lease(api_client, name)
        report_ready(api_client, name)

    def _safely(self, beat: Any, name: str) -> None:
        try:
            beat(self._api_client, name)
        except Exception as error:  # a missed beat is retried next interval, as a kubelet would
            log.warning("heartbeat for node %s failed: %s", name, error)
