"""Pod status as a kubelet reports it, driven by the tests (nothing runs in the pods).

`FakeKubelet.run/exit/waiting` write what a kubelet would write to a pod's status;
its background thread confirms graceful deletions of bound pods (a kubelet removes
the pod object once its containers stopped), so the operator's deletes complete.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timezone
from typing import Any

from kubespeed import wiring

SELECTOR = f"{wiring.MANAGED_BY_LABEL}={wiring.MANAGED_BY}"
_ips = itertools.count(2)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _container(state: dict[str, Any], ready: bool) -> list[dict[str, Any]]:
    return [{
        "name": wiring.TRAINER_CONTAINER_NAME, "image": "ghcr.io/kubespeed/kubespeed-trainer:0.1.0", "imageID": "",
        "ready": ready, "restartCount": 0, "started": ready, "state": state,
    }]  # fmt: skip


class FakeKubelet:
    def __init__(self, api_client: Any, interval: float = 0.2):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reap, name="fake-kubelet", daemon=True)

    def start(self) -> FakeKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _patch(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(name, namespace, {"status": status})

    def run(self, namespace: str, name: str, ip: str | None = None) -> str:
        """Running and Ready with a pod IP (returned)."""
        if ip is None:
            n = next(_ips)
            ip = f"10.244.{n // 250}.{n % 250}"
        self._patch(namespace, name, {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": _now(),
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"},
                           {"type": "Initialized", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": _container({"running": {"startedAt": _now()}}, True),
        })  # fmt: skip
        return ip

    def exit(self, namespace: str, name: str, code: int, reason: str | None = None) -> None:
        """The trainer container exited with `code`: Succeeded for 0, else Failed."""
        terminated = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"), "startedAt": _now(), "finishedAt": _now()}
        self._patch(namespace, name, {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": _container({"terminated": terminated}, False),
        })  # fmt: skip

    def waiting(self, namespace: str, name: str, reason: str, message: str) -> None:
        """Pending with the container waiting, e.g. ErrImagePull."""
        self._patch(namespace, name, {
            "phase": "Pending",
            "containerStatuses": _container({"waiting": {"reason": reason, "message": message}}, False),
        })  # fmt: skip

    def _reap(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                pods = self.core.list_pod_for_all_namespaces(label_selector=SELECTOR).items
                for pod in pods:
                    if pod.metadata.deletion_timestamp is not None and pod.spec.node_name:
                        # The uid precondition spares a new pod that took the old one's name.
                        options = {"gracePeriodSeconds": 0, "preconditions": {"uid": pod.metadata.uid}}
                        self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, body=options)
            except Exception:  # noqa: BLE001  the API server may be busy or a pod already gone; try again
                time.sleep(self.interval)
