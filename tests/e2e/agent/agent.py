"""The test node agent: plays the kubelet for the control plane's fake GPU nodes.

    agent = NodeAgent(api_client, ["gpu-node-0", "gpu-node-1"], ["ghcr.io/kubespeed/kubespeed-trainer:0.1.0"])
    agent.start()
    ...                       # pods bound to those nodes run as local process trees
    agent.stop()              # every pod process killed; namespaces, mounts, files gone

For each pod bound to one of its nodes the agent mounts the pod's volumes (volumes.py),
gives it a network namespace with its own address (netns.py) and DNS files (dns.py), and
starts each container through podinit.py in private mount, UTS and PID namespaces, with
the pod's environment (env.py) and the user, working directory and command of its image
(images.py). It reports status as the kubelet does (status.py): Pending and
ContainerCreating, Running with podIP once every container runs, then Succeeded or Failed
with each container's exit code; restartPolicy OnFailure/Always restarts a container in
place (restartCount, lastState) after a back-off of 1 s doubling to 10 s, shorter than the
kubelet's 10 s to 5 min so tests stay quick. Deleting a pod sends SIGTERM to each
container's PID 1, waits the grace period, then SIGKILLs what is left, and finally removes
the pod object as the kubelet does.

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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import dns, images, status, volumes
from .env import EnvError, command_line, container_env
from .images import ImagePullError, LocalImage
from .netns import NodeNetwork

log = logging.getLogger(__name__)

PODINIT = Path(__file__).with_name("podinit.py")
DEFAULT_GRACE_SECONDS = 30
BACKOFF_START, BACKOFF_MAX = 1.0, 10.0
RETRY_SECONDS = 1.0
POLL_SECONDS = 0.05
WATCH_SECONDS = 5
MESSAGE_TAIL_BYTES = 2048


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
        self._stopping = threading.Event()
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
        self._stopping.set()
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
        while not self._stopping.wait(RETRY_SECONDS):
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
        while not self._stopping.is_set():
            try:
                if not version:
                    version = self._list_pods()
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, resource_version=version,
                                              timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True)  # fmt: skip
                for event in stream:
                    if self._stopping.is_set():
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
                    self._stopping.wait(RETRY_SECONDS)
            except Exception as error:
                log.warning("pod watch failed: %s", error)
                version = ""
                self._stopping.wait(RETRY_SECONDS)

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
            if self._stopping.is_set():
                return
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                # Finished before this agent started: only a deletion is left to confirm.
                if pod["metadata"].get("deletionTimestamp"):
                    self._confirm_deletion(pod)
                return
            worker = PodWorker(self, pod)
            self._workers[uid] = worker
        worker.start()

    def _deleted(self, pod: dict[str, Any]) -> None:
        with self._lock:
            worker = self._workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.deleted(pod)

    def _confirm_deletion(self, pod: dict[str, Any]) -> None:
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


class _Stop(Exception):
    """The pod was deleted or the agent is stopping: leave the current step."""


class Container:
    """One container of the pod: its spec, its reported status, its current process."""

    def __init__(self, spec: dict[str, Any], init: bool) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.status = status.ContainerStatus(self.name, spec.get("image", ""))
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = ""
        self.restart_at: float | None = None
        self.backoff = BACKOFF_START
        self.done = False


class PodWorker(threading.Thread):
    """Runs one pod from binding to deletion. It is also the thread that starts the
    pod's processes, and it outlives them, so their parent-death signal never fires early."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        super().__init__(name=f"pod-{metadata['namespace']}/{metadata['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid: str = metadata["uid"]
        self.key = f"{metadata['namespace']}/{metadata['name']}"
        self.dir = agent.work_dir / "pods" / f"{metadata['namespace']}_{metadata['name']}_{self.uid[:8]}"
        self.changed = threading.Event()
        self.delete_requested = False
        self.gone = False
        self.killing = False
        self.grace: float | None = None
        self.node = pod["spec"]["nodeName"]
        self.host_ip = agent.host_ips.get(self.node, "127.0.0.1")
        self.pod_ip = ""
        self.netns = ""
        self.sandbox_ready = False
        self.phase = "Pending"
        self.start_time = status.now()
        self.init_containers = [Container(c, True) for c in pod["spec"].get("initContainers") or []]
        self.containers = [Container(c, False) for c in pod["spec"]["containers"]]
        self.volumes: dict[str, volumes.Volume] = {}
        self._last_status = ""
        self._events: set[tuple[str, str]] = set()
        self._hosts_text = ""
        self._hosts_lock = threading.Lock()

    # ---- called from other threads ------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.delete_requested:
            self.grace = pod["metadata"].get("deletionGracePeriodSeconds")
            self.delete_requested = True
        self.changed.set()

    def deleted(self, pod: dict[str, Any] | None) -> None:
        """The object is gone (a forced deletion, or one this agent confirmed)."""
        if not self.delete_requested:
            # Force-deleted: the kubelet still stops the containers, with a short grace.
            grace = (pod or self.pod)["metadata"].get("deletionGracePeriodSeconds")
            self.grace = min(2, grace) if grace else 2
        self.gone = True
        self.delete_requested = True
        self.changed.set()

    def kill(self) -> None:
        self.killing = True
        self.delete_requested = True
        self.changed.set()

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.init_containers + self.containers if c.process and c.process.poll() is None]

    def signal(self, signum: int, container: str | None) -> None:
        for c in self.containers + self.init_containers:
            if (container is None or c.name == container) and c.process and c.process.poll() is None:
                os.kill(c.process.pid, signum)
                return
        raise LookupError(f"no running container {container or ''} in pod {self.key}")

    def write_hosts(self, text: str) -> None:
        """Rewrite /etc/hosts in place (same inode) so the pod's bind mount sees it."""
        with self._hosts_lock:
            if text == self._hosts_text or not self.sandbox_ready:
                return
            with contextlib.suppress(FileNotFoundError), open(self.dir / "etc" / "hosts", "r+") as handle:
                handle.write(text)
                handle.truncate()
                self._hosts_text = text

    # ---- the pod's life ---------------------------------------------------------------

    def run(self) -> None:
        try:
            self._live()
        except _Stop:
            pass
        except Exception as error:
            log.exception("pod %s failed in the agent", self.key)
            self.agent.event(self.pod, "AgentError", f"test node agent: {error}", "Warning")
        finally:
            self._stop_all(0 if self.killing else self._grace())
            self._teardown()
            if not self.killing:
                self._report()
                self._wait_for_deletion()
            self.agent.forget(self)

    def _live(self) -> None:
        self.dir.mkdir(parents=True)
        self._report()
        self.volumes = self._retry(self._mount_volumes)
        self.netns, self.pod_ip = self.agent.network.add_pod(self.uid)  # type: ignore[union-attr]
        self._write_dns_files()
        self.sandbox_ready = True
        self.agent.set_member(self.uid, self._member(ready=False))
        self._report()
        resolved = self._retry(self._pull_images)
        for container in self.init_containers:
            if not self._run_init(container, resolved[container.name]):
                return
        for container in self.containers:
            self._start(container, resolved[container.name])
        self._supervise(resolved)

    def _grace(self) -> float:
        if self.grace is not None:
            return float(self.grace)
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))

    def _check(self) -> None:
        if self.delete_requested:
            raise _Stop

    def _retry(self, step: Any) -> Any:
        """Run `step` until it succeeds; its failures were reported; a deletion interrupts."""
        while True:
            self._check()
            result = step()
            if result is not None:
                return result
            self.changed.wait(RETRY_SECONDS)
            self.changed.clear()

    def _warn_once(self, reason: str, message: str) -> None:
        if (reason, message) not in self._events:
            self._events.add((reason, message))
            self.agent.event(self.pod, reason, message, "Warning")

    # ---- steps ----------------------------------------------------------------------------

    def _mount_volumes(self) -> dict[str, volumes.Volume] | None:
        try:
            return volumes.prepare(self.pod, self.dir, self.agent.shm_dir / self.uid, self.agent.claims_root,
                                   self.agent.read_config_map, self.agent.read_secret, self.agent.claim_exists)  # fmt: skip
        except volumes.MountPending as error:
            self._warn_once("FailedMount", f"MountVolume.SetUp failed: {error}")
            return None

    def _pull_images(self) -> dict[str, LocalImage] | None:
        resolved: dict[str, LocalImage] = {}
        failed = False
        for container in self.init_containers + self.containers:
            try:
                resolved[container.name] = images.resolve(container.spec.get("image", ""), self.agent.images)
            except ImagePullError as error:
                failed = True
                # The kubelet alternates these two while it backs off.
                reason = "ImagePullBackOff" if container.status.state.get("waiting", {}).get("reason") == "ErrImagePull" else "ErrImagePull"
                message = str(error) if reason == "ErrImagePull" else f'Back-off pulling image "{container.spec.get("image", "")}"'
                container.status.state = status.waiting(reason, message)
                self._warn_once("Failed", str(error))
        if failed:
            self._report()
            return None
        return resolved

    def _write_dns_files(self) -> None:
        etc = self.dir / "etc"
        etc.mkdir()
        (etc / "hosts").write_text(dns.hosts_file(self._member(ready=False), [], {}))
        (etc / "resolv.conf").write_text(dns.resolv_conf(self.pod["metadata"]["namespace"]))
        (etc / "hostname").write_text(dns.pod_hostname(self.pod) + "\n")

    def _member(self, ready: bool) -> dns.Member:
        return dns.Member(self.pod["metadata"]["namespace"], dns.pod_hostname(self.pod), self.pod["spec"].get("subdomain") or "",
                          dict(self.pod["metadata"].get("labels") or {}), self.pod_ip, ready)  # fmt: skip

    def _container_spec(self, container: Container, image: LocalImage) -> dict[str, Any] | None:
        """podinit's input, or None after reporting CreateContainerConfigError."""
        pod_spec = self.pod["spec"]
        try:
            env = container_env(self.pod, container.spec, {**image.env, "HOSTNAME": dns.pod_hostname(self.pod), "HOME": "/tmp"},
                                self.pod_ip, self.host_ip, self.agent.read_config_map, self.agent.read_secret,
                                self.agent.allocatable.get(self.node, {}))  # fmt: skip
            mounts = volumes.container_mounts(container.spec, self.volumes)
        except (EnvError, volumes.MountPending) as error:
            container.status.state = status.waiting("CreateContainerConfigError", str(error))
            self._warn_once("Failed", f"Error: {error}")
            return None
        pod_security = pod_spec.get("securityContext") or {}
        security = {**pod_security, **(container.spec.get("securityContext") or {})}
        uid = security.get("runAsUser", image.uid)
        gid = security.get("runAsGroup", image.gid)
        groups = sorted({gid, *([pod_security["fsGroup"]] if "fsGroup" in pod_security else []),
                         *(pod_security.get("supplementalGroups") or [])})  # fmt: skip
        run_dir = self.dir / f"{container.name}.run"
        for sub in ("root", "stage", "tmp"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        (run_dir / "tmp").chmod(0o1777)
        etc = self.dir / "etc"
        files = [{"kind": "bind", "source": str(etc / name), "target": f"/etc/{name}", "readOnly": False}
                 for name in ("hosts", "resolv.conf", "hostname")]  # fmt: skip
        error_file, started_file = run_dir / "start-error", run_dir / "started"
        error_file.unlink(missing_ok=True)
        started_file.unlink(missing_ok=True)
        return {
            "netns": self.netns,
            "hostname": dns.pod_hostname(self.pod),
            "root": str(run_dir / "root"),
            "stage": str(run_dir / "stage"),
            "tmp": str(run_dir / "tmp"),
            "traverse": image.traverse if uid != 0 else [],
            "mounts": files + mounts,
            "workingDir": container.spec.get("workingDir") or image.working_dir,
            "command": command_line(container.spec, image.entrypoint, image.cmd, env),
            "env": env,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "agentPid": os.getpid(),
            "errorFile": str(error_file),
            "startedFile": str(started_file),
        }

    def _start(self, container: Container, image: LocalImage) -> None:
        spec = self._retry(lambda: self._container_spec(container, image) or self._report())
        spec_path = self.dir / f"{container.name}.run" / "container.json"
        spec_path.write_text(json.dumps(spec))
        self._check()
        with open(self.dir / f"{container.name}.log", "ab") as log_file:
            container.process = subprocess.Popen([sys.executable, str(PODINIT), str(spec_path)], stdin=subprocess.DEVNULL,
                                                 stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                                 env={"PATH": os.environ.get("PATH", images.SYSTEM_PATH)})  # fmt: skip
        started = self.dir / f"{container.name}.run" / "started"
        while not started.exists() and container.process.poll() is None:
            time.sleep(POLL_SECONDS / 5)
        container.started_at = status.now()
        container.restart_at = None
        container.status.container_id = f"kubespeed-agent://{self.uid[:8]}-{container.name}-{container.status.restart_count}"
        container.status.state = status.running(container.started_at)
        self.agent.event(self.pod, "Started", f"Started container {container.name}")

    def _reap(self, container: Container) -> bool:
        """Record the container's exit if its process has ended; True if it did."""
        process = container.process
        if process is None or process.poll() is None:
            return False
        code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        error_file = self.dir / f"{container.name}.run" / "start-error"
        reason = message = ""
        if code == 128 and error_file.exists():
            reason, message = "StartError", error_file.read_text()
        elif code != 0 and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with open(self.dir / f"{container.name}.log", "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - MESSAGE_TAIL_BYTES))
                message = handle.read().decode(errors="replace")
        container.status.state = status.terminated(code, container.started_at, status.now(),
                                                   container.status.container_id, reason, message)  # fmt: skip
        container.process = None
        return True

    def _restarts(self, container: Container) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        code = container.status.exit_code
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    def _back_off(self, container: Container) -> None:
        """Schedule the restart; the kubelet shows CrashLoopBackOff while it waits."""
        container.status.last_state = container.status.state
        container.status.restart_count += 1
        container.status.state = status.waiting(
            "CrashLoopBackOff", f"back-off {container.backoff:.0f}s restarting failed container={container.name} pod={self.key}")
        container.restart_at = time.monotonic() + container.backoff
        container.backoff = min(container.backoff * 2, BACKOFF_MAX)

    def _run_init(self, container: Container, image: LocalImage) -> bool:
        while True:
            self._start(container, image)
            self._report()
            while not self._reap(container):
                self._wait()
            if container.status.exit_code == 0:
                self._report()
                return True
            if not self._restarts(container):
                self.phase = "Failed"
                return False
            self._back_off(container)
            self._report()
            while time.monotonic() < (container.restart_at or 0):
                self._wait()

    def _wait(self) -> None:
        self._check()
        self.changed.wait(POLL_SECONDS)
        self.changed.clear()

    def _supervise(self, resolved: dict[str, LocalImage]) -> None:
        self.phase = "Running"
        self.agent.set_member(self.uid, self._member(ready=True))
        self._report()
        while True:
            changed = False
            for container in self.containers:
                if self._reap(container):
                    changed = True
                    if self._restarts(container):
                        self._back_off(container)
                    else:
                        container.done = True
                if container.restart_at is not None and time.monotonic() >= container.restart_at:
                    self._start(container, resolved[container.name])
                    changed = True
            if all(c.done for c in self.containers):
                self.phase = "Succeeded" if all(c.status.exit_code == 0 for c in self.containers) else "Failed"
                return
            if changed:
                self.agent.set_member(self.uid, self._member(ready=all(c.status.is_running for c in self.containers)))
                self._report()
            self._wait()

    def _stop_all(self, grace: float) -> None:
        """SIGTERM each container's PID 1 (podinit forwards it), SIGKILL what outlives the grace."""
        running = [c for c in self.init_containers + self.containers if c.process and c.process.poll() is None]
        if running and grace > 0:
            for container in running:
                self.agent.event(self.pod, "Killing", f"Stopping container {container.name}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(container.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not self.killing and any(c.process.poll() is None for c in running):  # type: ignore[union-attr]
                self.changed.wait(POLL_SECONDS)
                self.changed.clear()
        for container in running:
            process = container.process
            assert process is not None
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self._reap(container)
        codes = [c.status.exit_code for c in self.containers]
        if self.phase == "Running" or (self.phase == "Pending" and any(code is not None for code in codes)):
            self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"

    def _teardown(self) -> None:
        """Release the sandbox: address, namespaces, volumes (claims stay; logs stay for tests)."""
        self.sandbox_ready = False
        self.agent.set_member(self.uid, None)
        if self.netns and self.agent.network is not None:
            self.agent.network.remove_pod(self.uid)
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        shutil.rmtree(self.agent.shm_dir / self.uid, ignore_errors=True)
        for run_dir in self.dir.glob("*.run"):
            shutil.rmtree(run_dir, ignore_errors=True)

    def _wait_for_deletion(self) -> None:
        while not self.delete_requested and not self.agent._stopping.is_set():
            self.changed.wait(RETRY_SECONDS)
            self.changed.clear()
        if self.delete_requested and not self.gone and not self.killing:
            self.agent._confirm_deletion(self.pod)

    # ---- status ---------------------------------------------------------------------------------

    def _report(self) -> None:
        """Merge-patch the whole kubelet-owned status; skipped when nothing changed."""
        from kubernetes.client.exceptions import ApiException

        if self.gone or self.killing:
            return
        body = status.pod_status(self.pod.get("status") or {}, self.phase, self.sandbox_ready,
                                 [c.status for c in self.init_containers], [c.status for c in self.containers],
                                 self.host_ip, self.pod_ip, self.start_time)  # fmt: skip
        comparable = json.dumps(body, sort_keys=True)
        if comparable == self._last_status:
            return
        metadata = self.pod["metadata"]
        try:
            self.agent.core.patch_namespaced_pod_status(metadata["name"], metadata["namespace"], {"status": body},
                                                        _content_type="application/merge-patch+json")  # fmt: skip
            self._last_status = comparable
        except ApiException as error:
            if error.status != 404:
                raise
