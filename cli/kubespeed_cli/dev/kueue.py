"""Kueue, built from its pinned Go module, run beside a dev control plane.

    with Kueue(control_plane) as kueue:   # CRDs applied, the manager running, its webhooks registered
        kueue.apply(queues)                # ResourceFlavor, ClusterQueue, LocalQueue as dicts

tools/kueue/go.mod pins sigs.k8s.io/kueue. `ensure_kueue()` builds `cmd/kueue` once per
machine into `${KUBESPEED_CACHE:-~/.cache/kubespeed}/kueue/<key>/bin/kueue` (the key hashes
the module's go.mod and go.sum) and copies the CRDs and the webhook configuration from the
same module version beside it, so what is applied always matches what runs.

Only the plain-pod integration is enabled (kubespeed's pods join Kueue as pod groups). The
webhooks are reached by URL on loopback, served with the control plane's serving certificate;
the pod webhook sees only pods that name a queue, so the rest of the cluster never depends
on Kueue being up.
"""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubespeed.ports import free_port
from kubespeed_cli.dev.build import TOOLS_DIR, BuildError, BuildStep, build_once, log, required_versions, run_steps
from kubespeed_cli.dev.cluster import ControlPlane
from kubespeed_cli.dev.processes import ControlPlaneError, Process, http_ok, spawn, stop, wait_until

KUEUE_MODULE = "sigs.k8s.io/kueue"
MODULE_DIR = TOOLS_DIR / "kueue"
# Bump when the way Kueue is built or what is copied beside it changes.
RECIPE = "1"
CRD_DIR = "config/components/crd/bases"
WEBHOOK_MANIFEST = "config/components/webhook/manifests.yaml"
NAMESPACE = "kueue-system"
FRAMEWORKS = ("pod",)
WEBHOOK_NAMES = {"MutatingWebhookConfiguration": "kubespeed-dev-kueue-mutating", "ValidatingWebhookConfiguration": "kubespeed-dev-kueue-validating"}
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Kueue reads its metrics serving certificate from this fixed path whenever it does not manage
# certificates itself (cmd/kueue/main.go); it sees our files there through a private mount.
METRICS_CERT_DIR = "kueue/metrics/certs"


def cache_root() -> Path:
    return Path(os.environ.get("KUBESPEED_CACHE") or Path.home() / ".cache" / "kubespeed") / "kueue"


def kueue_version(module_dir: Path = MODULE_DIR) -> str:
    return required_versions((module_dir / "go.mod").read_text())[KUEUE_MODULE]


def cache_key(module_dir: Path = MODULE_DIR) -> str:
    """`kueue-v0.17.0-linux-x86_64-<hash of go.mod and go.sum>`."""
    digest = hashlib.sha256(RECIPE.encode())
    for name in ("go.mod", "go.sum"):
        digest.update(name.encode() + b"\0" + (module_dir / name).read_bytes() + b"\0")
    machine = f"{platform.system().lower()}-{platform.machine()}"
    return f"kueue-{kueue_version(module_dir)}-{machine}-{digest.hexdigest()[:12]}"


def build_step(out: Path, version: str, module_dir: Path = MODULE_DIR) -> BuildStep:
    ldflags = f"-s -w -X {KUEUE_MODULE}/pkg/version.GitVersion={version}"
    return BuildStep(f"kueue {version}", module_dir, ("go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(out), f"{KUEUE_MODULE}/cmd/kueue"))


def _complete(folder: Path) -> bool:
    return os.access(folder / "bin" / "kueue", os.X_OK) and (folder / "webhooks.yaml").is_file() and any((folder / "crd").glob("*.yaml"))


def ensure_kueue(module_dir: Path = MODULE_DIR, root: Path | None = None) -> Path:
    """The cached folder with bin/kueue, crd/*.yaml and webhooks.yaml, built first if missing."""
    version = kueue_version(module_dir)

    def build(folder: Path) -> None:
        log(f"building Kueue {version} from {module_dir} (a few minutes on two cores; later runs reuse it)")
        run_steps([build_step(folder / "bin" / "kueue", version, module_dir)])
        source = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", KUEUE_MODULE], cwd=module_dir,
                                capture_output=True, text=True)  # fmt: skip
        if source.returncode != 0 or not source.stdout.strip():
            raise BuildError(f"`go list -m {KUEUE_MODULE}` in {module_dir} failed: {source.stderr.strip()}")
        module = Path(source.stdout.strip())
        shutil.copytree(module / CRD_DIR, folder / "crd")
        shutil.copy(module / WEBHOOK_MANIFEST, folder / "webhooks.yaml")
        for copied in [*(folder / "crd").iterdir(), folder / "webhooks.yaml", folder / "crd"]:
            copied.chmod(0o755 if copied.is_dir() else 0o644)  # the module cache's files are read-only

    return build_once(root or cache_root(), cache_key(module_dir), _complete, build)


def _kept(webhook: dict[str, Any]) -> bool:
    """Kueue's own kinds and pods: the webhooks of integrations left disabled have no handler."""
    return all("kueue.x-k8s.io" in rule.get("apiGroups", []) or rule.get("resources") == ["pods"] for rule in webhook.get("rules", []))


def webhook_configurations(manifest: str, base_url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, pointed at `base_url` instead of an in-cluster Service."""
    result = []
    for document in yaml.safe_load_all(manifest):
        if not document:
            continue
        hooks = []
        for hook in document.get("webhooks", []):
            if not _kept(hook):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook = {**hook, "clientConfig": {"url": f"{base_url}{path}", "caBundle": base64.b64encode(ca_bundle).decode()}}
            if any(rule.get("resources") == ["pods"] for rule in hook.get("rules", [])):
                hook["objectSelector"] = {"matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]}
            hooks.append(hook)
        kind = document["kind"]
        result.append({"apiVersion": document["apiVersion"], "kind": kind, "metadata": {"name": WEBHOOK_NAMES[kind]}, "webhooks": hooks})
    return result


@dataclass(frozen=True)
class Ports:
    webhook: int
    health: int
    metrics: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(free_port(), free_port(), free_port())


def manager_configuration(ports: Ports, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports.health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{ports.metrics}"},
        "webhook": {"host": "127.0.0.1", "port": ports.webhook, "certDir": str(cert_dir)},
        # One instance: no need to wait for a lease before admitting anything.
        "leaderElection": {"leaderElect": False},
        # Its own certificates would name an in-cluster Service; ours name the loopback address.
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": list(FRAMEWORKS)},
    }


class Kueue:
    def __init__(self, control_plane: ControlPlane, folder: Path | None = None) -> None:
        self.cp = control_plane
        self._folder = folder
        self.process: Process | None = None
        self.dir: Path | None = None

    def __enter__(self) -> Kueue:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, env=self.cp.env())
        if result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump_all(objects))

    def start(self) -> None:
        folder = self._folder or ensure_kueue()
        if os.geteuid() != 0:
            raise ControlPlaneError("Kueue runs in a private mount namespace here (see METRICS_CERT_DIR), which needs root")
        self.dir = Path(tempfile.mkdtemp(prefix="kubespeed-kueue-"))
        try:
            self._start(folder, self.dir)
        except BaseException:
            self.stop()
            raise

    def _start(self, folder: Path, work: Path) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder / "crd"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=120s", "-f", str(folder / "crd"))
        self.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
        certs, upper, scratch = work / "certs", work / "etc", work / "etc-work"
        for directory in (certs, upper / METRICS_CERT_DIR, scratch):
            directory.mkdir(parents=True)
        for target in (certs, upper / METRICS_CERT_DIR):
            shutil.copy(self.cp.pki.serving.cert, target / "tls.crt")
            shutil.copy(self.cp.pki.serving.key, target / "tls.key")
        ports = Ports.pick()
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump(manager_configuration(ports, certs)))
        mount_then_exec = 'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && shift 2 && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mount_then_exec, "sh", str(upper), str(scratch),
                str(folder / "bin" / "kueue"), f"--config={config}", "--feature-gates=VisibilityOnDemand=false"]  # fmt: skip
        self.process = spawn("kueue", argv, self.cp.logs, env=self.cp.env())
        wait_until(lambda: http_ok(f"http://127.0.0.1:{ports.health}/readyz"), "kueue /readyz", [self.process], 120)
        manifest = (folder / "webhooks.yaml").read_text()
        self.apply(webhook_configurations(manifest, f"https://127.0.0.1:{ports.webhook}", self.cp.pki.ca.cert.read_bytes()))
        # The API server reaches the webhooks: a dry run passes through Kueue's ResourceFlavor webhooks.
        probe = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "kubespeed-probe"}}
        wait_until(lambda: self._dry_run(probe), "the API server to reach Kueue's webhooks", [self.process], 60)

    def _dry_run(self, body: dict[str, Any]) -> bool:
        try:
            self.kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(body))
        except ControlPlaneError:
            return False
        return True

    def stop(self) -> None:
        """Webhooks first, so that nothing the cluster does waits on a Kueue that is gone; then the manager."""
        for kind, name in WEBHOOK_NAMES.items():
            subprocess.run(["kubectl", "delete", kind.lower(), name, "--ignore-not-found"], capture_output=True, env=self.cp.env())
        if self.process is not None:
            stop(self.process)
            self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def log_tail(self, lines: int = 40) -> str:
        return self.process.tail(lines) if self.process is not None else ""
