"""One pod on the test node agent, from binding to deletion, as the kubelet runs it.

Volumes (volumes.py), then the sandbox: a network namespace with an address (netns.py)
and the DNS files (dns.py); then the image (images.py: an unknown one waits in
ErrImagePull / ImagePullBackOff), init containers one by one, and the containers, each
started by podinit.py with its environment (env.py). Status goes to the API server as the
kubelet writes it (status.py). restartPolicy OnFailure/Always restarts a container in
place (restartCount, lastState) after a back-off of 1 s doubling to 10 s, shorter than the
kubelet's 10 s to 5 min so tests stay quick. Deletion sends SIGTERM to each container's
PID 1, waits the grace period, SIGKILLs what is left, and removes the pod object. A
container's termination message is its terminationMessagePath file (an empty one per
start, bind-mounted in), or for a failure under FallbackToLogsOnError the end of its log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import dns, images, status, volumes
from .env import EnvError, command_line, container_env
from .images import ImagePullError, LocalImage

if TYPE_CHECKING:
    from .agent import NodeAgent

log = logging.getLogger(__name__)

PODINIT = Path(__file__).with_name("podinit.py")
DEFAULT_GRACE_SECONDS = 30
BACKOFF_START, BACKOFF_MAX = 1.0, 10.0
RETRY_SECONDS = 1.0
POLL_SECONDS = 0.05
# What the kubelet reads of a container's termination message file, and of its log when the file
# is empty and the policy is FallbackToLogsOnError (kubecontainer.MaxContainerTerminationMessage*).
MESSAGE_FILE_BYTES = 4096
MESSAGE_TAIL_BYTES, MESSAGE_TAIL_LINES = 2048, 80
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"


def _tail(path: Path, size: int) -> bytes:
    """The last `size` bytes of a file (nothing, if there is no file)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read()
    except FileNotFoundError:
        return b""


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
            # HOME as the kubelet sets it: the image's own when it has one.
            env = container_env(self.pod, container.spec, {"HOME": "/tmp", **image.env, "HOSTNAME": dns.pod_hostname(self.pod)},
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
        # As the kubelet: an empty file per container start, writable by any user, at terminationMessagePath.
        message_file = run_dir / "termination-log"
        message_file.write_bytes(b"")
        message_file.chmod(0o666)
        message_path = container.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        files.append({"kind": "bind", "source": str(message_file), "target": message_path, "readOnly": False})
        error_file, started_file = run_dir / "start-error", run_dir / "started"
        error_file.unlink(missing_ok=True)
        started_file.unlink(missing_ok=True)
        return {
            "netns": self.netns,
            "hostname": dns.pod_hostname(self.pod),
            "root": str(run_dir / "root"),
            "imageRoot": image.root,
            "stage": str(run_dir / "stage"),
            "tmp": str(run_dir / "tmp"),
            "traverse": image.traverse if uid != 0 else [],
            "imagePaths": image.traverse,
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
        else:
            message = _tail(self.dir / f"{container.name}.run" / "termination-log", MESSAGE_FILE_BYTES).decode(errors="replace")
            if not message and code != 0 and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                lines = _tail(self.dir / f"{container.name}.log", MESSAGE_TAIL_BYTES).splitlines(keepends=True)
                message = b"".join(lines[-MESSAGE_TAIL_LINES:]).decode(errors="replace")
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
        while not self.delete_requested and not self.agent.stopping.is_set():
            self.changed.wait(RETRY_SECONDS)
            self.changed.clear()
        if self.delete_requested and not self.gone and not self.killing:
            self.agent.confirm_deletion(self.pod)

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
