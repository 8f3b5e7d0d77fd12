"""The test node agent: plays the kubelet for the control plane's fake GPU nodes.

    agent = NodeAgent(api_client, ["gpu-node-0", "gpu-node-1"], ["ghcr.io/kubespeed/kubespeed-trainer:0.1.0"])
    agent.start()
    ...                       # pods bound to those nodes run as local process trees
    agent.stop()              # every pod process killed; namespaces, mounts, files gone

It watches the pods bound to its nodes and runs each with a PodWorker (pod.py), which
plays the kubelet's part for that pod: volumes, network, DNS, containers, status, deletion.
The agent owns what pods share: the node network namespace (netns.py), the claims'
directories, the DNS view of every running pod, and the API client.

Not modelled: probes (a running container is Ready), resource limits and OOM kills (no
cgroups), readOnlyRootFilesystem (a non-root pod cannot write the machine's directories
anyway), service-link variables, image pull policies, projected service-account tokens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import dns, images, status, volumes
from .images import LocalImage
from .netns import NodeNetwork
from .pod import RETRY_SECONDS, PodWorker

log = logging.getLogger(__name__)

WATCH_SECONDS = 5
SHM_PARENT = Path("/dev/shm")
DIR_PREFIX = "ks-agent-"


def remove_stale_dirs(parent: Path) -> list[Path]:
    """Folders of agents whose process is gone (killed before stop() could clean up):
    their pods died with them, only files are left. Returns what was removed."""
    removed = []
    for path in parent.glob(f"{DIR_PREFIX}*-*"):
        pid = path.name[len(DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class NodeAgent:
    def __init__(self, api_client: Any, node_names: Iterable[str], trainer_images: Iterable[str],
                 work_dir: Path | None = None) -> None:  # fmt: skip
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.nodes = set(node_names)
        self.images: dict[str, LocalImage] = {image: images.trainer_image() for image in trainer_images}
        parents = (Path(work_dir or tempfile.gettempdir()), SHM_PARENT)
        for parent in parents:
            remove_stale_dirs(parent)
        self.work_dir, self.shm_dir = (Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=p)) for p in parents)
        self.claims_root = self.work_dir / "claims"
        self.network: NodeNetwork | None = None
        self.host_ips: dict[str, str] = {}
        self.allocatable: dict[str, dict[str, str]] = {}
        self._workers: dict[str, PodWorker] = {}
        self._members: dict[str, dns.Member] = {}
        self._services: dict[tuple[str, str], dict[str, Any]] = {}
        self._service_namespaces: set[str] = set()
        self._lock = threading.RLock()
        self._dns_lock = threading.Lock()
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        for name in self.nodes:
            node_status = self.core.read_node(name).status
            addresses = {a.type: a.address for a in (node_status and node_status.addresses) or []}
            self.host_ips[name] = addresses.get("InternalIP", "127.0.0.1")
            self.allocatable[name] = dict((node_status and node_status.allocatable) or {})
        self.network = NodeNetwork()
        self.network.forward_host_port(urlparse(self.api_client.configuration.host).port or 443)
        for target, name in ((self._watch_pods, "agent-watch"), (self._refresh_dns_loop, "agent-dns")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Kill every pod at once (no grace: the test is over) and remove all the agent made."""
        self.stopping.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join(timeout=30)
        for thread in self._threads:
            thread.join(timeout=WATCH_SECONDS + 5)
        if self.network is not None:
            self.network.close()
            self.network = None
        shutil.rmtree(self.work_dir, ignore_errors=True)
        shutil.rmtree(self.shm_dir, ignore_errors=True)

    def __enter__(self) -> NodeAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- for tests ---------------------------------------------------------------------

    def pids(self) -> list[int]:
        """Process ids of the running containers' podinit processes (their process groups)."""
        with self._lock:
            return [pid for worker in self._workers.values() for pid in worker.pids()]

    def claim_dir(self, namespace: str, claim: str) -> Path:
        return volumes.claim_dir(self.claims_root, namespace, claim)

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """A container's output (all restarts), like `kubectl logs`; the latest pod of that name."""
        dirs = sorted(self.work_dir.glob(f"pods/{namespace}_{name}_*"), key=lambda p: p.stat().st_mtime)
        if not dirs:
            return ""
        files = sorted(dirs[-1].glob(f"{container or '*'}.log"))
        return "".join(f.read_text(errors="replace") for f in files)

    def signal_container(self, namespace: str, name: str, signum: int, container: str | None = None) -> None:
        """Send `signum` to a container's PID 1, as `kill` on the node would (a crash, an OOM kill)."""
        with self._lock:
            worker = next((w for w in self._workers.values() if w.key == f"{namespace}/{name}"), None)
        if worker is None:
            raise LookupError(f"pod {namespace}/{name} is not running on this agent")
        worker.signal(signum, container)

    # ---- API helpers used by pod workers ---------------------------------------------------

    def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as error:
            if error.status == 404:
                raise KeyError(name) from None
            raise

    def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        from kubernetes.client.exceptions import ApiException

        try:
            data = self.core.read_namespaced_secret(name, namespace).data or {}
        except ApiException as error:
            if error.status == 404:
                raise KeyError(name) from None
            raise
        return {key: base64.b64decode(value).decode(errors="replace") for key, value in data.items()}

    def claim_exists(self, namespace: str, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.read_namespaced_persistent_volume_claim(name, namespace)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def event(self, pod: dict[str, Any], reason: str, message: str, kind: str = "Normal") -> None:
        metadata = pod["metadata"]
        stamp = status.now()
        body = {
            "metadata": {"name": f"{metadata['name']}.{secrets.token_hex(8)}", "namespace": metadata["namespace"]},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": metadata["name"],
                               "namespace": metadata["namespace"], "uid": metadata["uid"]},  # fmt: skip
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": pod["spec"].get("nodeName", "")},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        with contextlib.suppress(Exception):
            self.core.create_namespaced_event(metadata["namespace"], body)

    # ---- DNS ---------------------------------------------------------------------------

    def set_member(self, uid: str, member: dns.Member | None) -> None:
        with self._dns_lock:
            if member is None:
                self._members.pop(uid, None)
            else:
                self._members[uid] = member
            # A pod's first peers must not wait for the next round of the refresher.
            new_namespace = member is not None and member.namespace not in self._service_namespaces
        if new_namespace:
            self._load_services({member.namespace})  # type: ignore[union-attr]
        self.refresh_dns()

    def refresh_dns(self) -> None:
        with self._dns_lock:
            members = dict(self._members)
            services = dict(self._services)
        with self._lock:
            workers = {uid: self._workers.get(uid) for uid in members}
        for uid, member in members.items():
            worker = workers.get(uid)
            if worker is not None:
                worker.write_hosts(dns.hosts_file(member, list(members.values()), services))

    def _load_services(self, namespaces: set[str]) -> None:
        found: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            for namespace in namespaces:
                for service in self.core.list_namespaced_service(namespace).items:
                    found[(namespace, service.metadata.name)] = self.api_client.sanitize_for_serialization(service)
        except Exception as error:  # the API may be briefly away; the next round retries
            log.debug("listing services failed: %s", error)
            return
        with self._dns_lock:
            self._services = {key: value for key, value in self._services.items() if key[0] not in namespaces} | found
            self._service_namespaces |= namespaces

    def _refresh_dns_loop(self) -> None:
        """Services can appear after their pods; re-read them now and then."""
        while not self.stopping.wait(RETRY_SECONDS):
            with self._dns_lock:
                namespaces = {m.namespace for m in self._members.values()}
                self._services = {key: value for key, value in self._services.items() if key[0] in namespaces}
                self._service_namespaces &= namespaces
            self._load_services(namespaces)
            self.refresh_dns()

    # ---- watching pods -------------------------------------------------------------------

    def _watch_pods(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        version = ""
        while not self.stopping.is_set():
            try:
                if not version:
                    version = self._list_pods()
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, resource_version=version,
                                              timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True)  # fmt: skip
                for event in stream:
                    if self.stopping.is_set():
                        break
                    pod = event["raw_object"]
                    if event["type"] == "ERROR":
                        version = ""
                        break
                    version = pod["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self._deleted(pod)
                    elif event["type"] != "BOOKMARK":
                        self._observe(pod)
            except ApiException as error:
                if error.status == 410:
                    version = ""
                else:
                    log.warning("pod watch failed: %s", error)
                    self.stopping.wait(RETRY_SECONDS)
            except Exception as error:
                log.warning("pod watch failed: %s", error)
                version = ""
                self.stopping.wait(RETRY_SECONDS)

    def _list_pods(self) -> str:
        response = self.core.list_pod_for_all_namespaces(_preload_content=False)
        listing = json.loads(response.data)
        seen = set()
        for pod in listing["items"]:
            seen.add(pod["metadata"]["uid"])
            self._observe(pod)
        with self._lock:
            vanished = [w for uid, w in self._workers.items() if uid not in seen]
        for worker in vanished:
            worker.deleted(None)
        return listing["metadata"]["resourceVersion"]

    def _observe(self, pod: dict[str, Any]) -> None:
        if pod["spec"].get("nodeName") not in self.nodes:
            return
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if worker is not None:
                worker.update(pod)
                return
            if self.stopping.is_set():
                return
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                # Finished before this agent started: only a deletion is left to confirm.
                if pod["metadata"].get("deletionTimestamp"):
                    self.confirm_deletion(pod)
                return
            worker = PodWorker(self, pod)
            self._workers[uid] = worker
        worker.start()

    def _deleted(self, pod: dict[str, Any]) -> None:
        with self._lock:
            worker = self._workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.deleted(pod)

    def confirm_deletion(self, pod: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        metadata = pod["metadata"]
        try:
            # In the body: the API server reads DeleteOptions from the body when there is one.
            self.core.delete_namespaced_pod(metadata["name"], metadata["namespace"],
                                            body={"gracePeriodSeconds": 0, "preconditions": {"uid": metadata["uid"]}})  # fmt: skip
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def forget(self, worker: PodWorker) -> None:
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
