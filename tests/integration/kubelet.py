"""Pod status as a kubelet reports it, driven by the tests (nothing runs in the pods).

`FakeKubelet.run/exit/waiting` write what a kubelet would write to a pod's status;
its background thread confirms graceful deletions of bound pods (a kubelet removes
the pod object once its containers stopped), so the operator's deletes complete;
several at once, as the kubelets of many nodes do (one at a time, a benchmark that
deletes a thousand pods would time this thread, not the operator).
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from kubespeed import wiring

SELECTOR = f"{wiring.MANAGED_BY_LABEL}={wiring.MANAGED_BY}"
_ips = itertools.count(2)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _discard(response: Any) -> None:
    """Read a raw response to its end (so its connection can serve the next request) and drop it."""
    response.read()
    response.release_conn()


def _container(state: dict[str, Any], ready: bool) -> list[dict[str, Any]]:
    return [{
        "name": wiring.TRAINER_CONTAINER_NAME, "image": "ghcr.io/kubespeed/kubespeed-trainer:0.1.0", "imageID": "",
        "ready": ready, "restartCount": 0, "started": ready, "state": state,
    }]  # fmt: skip


class FakeKubelet:
    def __init__(self, api_client: Any):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reap, name="fake-kubelet", daemon=True)
        self._confirming = ThreadPoolExecutor(8, thread_name_prefix="fake-kubelet-confirm")

    def start(self) -> FakeKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._confirming.shutdown(wait=True, cancel_futures=True)

    def _patch(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        # Not read back into the client's models: a benchmark drives hundreds of pods.
        _discard(self.core.patch_namespaced_pod_status(name, namespace, {"status": status}, _preload_content=False))

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

    def exit(self, namespace: str, name: str, code: int, reason: str | None = None, message: str | None = None) -> None:
        """The trainer container exited with `code`: Succeeded for 0, else Failed; `message`: its termination message."""
        terminated = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"), "startedAt": _now(), "finishedAt": _now()}
        if message is not None:
            terminated["message"] = message
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
        follow(self.core.list_pod_for_all_namespaces, self._on_pod, self._stop, label_selector=SELECTOR)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if kind == "DELETED" or meta.get("deletionTimestamp") is None or not (pod.get("spec") or {}).get("nodeName"):
            return
        self._confirming.submit(self._confirm_deletion, meta)

    def _confirm_deletion(self, meta: dict[str, Any]) -> None:
        # The uid precondition spares a new pod that took the old one's name.
        options = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        for _ in range(20):
            try:
                _discard(self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=options, _preload_content=False))
                return
            except Exception as error:  # noqa: BLE001  the API server may be busy; a pod already gone is done
                if getattr(error, "status", None) in (404, 409):
                    return
                time.sleep(0.2)


def follow(list_func: Any, on_event: Any, stop: threading.Event, *args: Any, **kwargs: Any) -> None:
    """Call `on_event(type, object)` for each change of the listed objects, as an informer does, until `stop`.

    Objects stay plain dicts (the client's models cost more CPU than the API
    server's work when hundreds of pods start at once). The first watch reports
    every existing object as ADDED; later ones resume at the last resourceVersion,
    and any error (410 Gone, a restarting API server) starts over from a fresh list.
    """
    from kubernetes import watch

    version: str | None = None
    while not stop.is_set():
        try:
            resume = {"resource_version": version} if version else {}
            for event in watch.Watch().stream(list_func, *args, timeout_seconds=5, deserialize=False, allow_watch_bookmarks=True, **resume, **kwargs):
                if event["type"] == "ERROR":
                    version = None
                    break
                version = event["object"]["metadata"].get("resourceVersion") or version
                if event["type"] != "BOOKMARK":
                    on_event(event["type"], event["object"])
                if stop.is_set():
                    return
        except Exception:  # noqa: BLE001  (410 Gone, 429/504, connection reset): list again
            version = None
            stop.wait(0.2)
