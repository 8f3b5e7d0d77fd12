"""Build the control-plane binaries from the pinned Go modules in tools/, once per machine.

    python -m kubespeed_cli.dev.build          # prints the bin folder
    tools/build-binaries.sh                       # the same, for people and CI

tools/controlplane/go.mod pins k8s.io/kubernetes (kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl) and go.etcd.io/etcd/server/v3; tools/helm/go.mod pins helm.
The binaries land in `${KUBESPEED_CACHE:-~/.cache/kubespeed}/controlplane/<key>/bin/`,
where the key hashes both modules' go.mod and go.sum: a pin change builds a new folder,
an unchanged checkout (or a second clone on the same machine) reuses the old one.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parents[3] / "tools"
MODULE_DIRS = ("controlplane", "helm")

KUBERNETES_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
HELM_MODULE = "helm.sh/helm/v4"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES = (*KUBE_COMMANDS, "etcd", "helm")

# Bump when the way binaries are built changes (flags, names), so old folders are not reused.
RECIPE = "2"


class BuildError(RuntimeError):
    """A pinned module did not build; the message carries go's own output."""


@dataclass(frozen=True)
class Pins:
    kubernetes: str
    etcd: str
    helm: str


@dataclass(frozen=True)
class BuildStep:
    what: str
    module_dir: Path
    argv: tuple[str, ...]


def cache_root() -> Path:
    return Path(os.environ.get("KUBESPEED_CACHE") or Path.home() / ".cache" / "kubespeed") / "controlplane"


def _module_files(tools_dir: Path) -> list[Path]:
    return [tools_dir / module / name for module in MODULE_DIRS for name in ("go.mod", "go.sum")]


def required_versions(go_mod: str) -> dict[str, str]:
    """Module -> version from the require lines of a go.mod (replace lines, with `=>`, are skipped)."""
    versions = {}
    for line in go_mod.splitlines():
        match = re.match(r"^\s*(?:require\s+)?([\w.\-/]+)\s+(v[\w.\-+]+)\s*(?://.*)?$", line)
        if match and "=>" not in line:
            versions[match.group(1)] = match.group(2)
    return versions


def read_pins(tools_dir: Path = TOOLS_DIR) -> Pins:
    controlplane = required_versions((tools_dir / "controlplane" / "go.mod").read_text())
    helm = required_versions((tools_dir / "helm" / "go.mod").read_text())
    return Pins(kubernetes=controlplane[KUBERNETES_MODULE], etcd=controlplane[ETCD_MODULE], helm=helm[HELM_MODULE])


def cache_key(tools_dir: Path = TOOLS_DIR) -> str:
    """`k8s-v1.37.2-etcd-v3.7.0-helm-v4.3.2-linux-x86_64-<hash of both go.mod/go.sum>`."""
    digest = hashlib.sha256(RECIPE.encode())
    for path in _module_files(tools_dir):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    pins = read_pins(tools_dir)
    machine = f"{platform.system().lower()}-{platform.machine()}"
    return f"k8s-{pins.kubernetes}-etcd-{pins.etcd}-helm-{pins.helm}-{machine}-{digest.hexdigest()[:12]}"


def kube_version_ldflags(version: str, build_date: str) -> list[str]:
    """What kubernetes/hack/lib/version.sh stamps in: without it the binaries say v0.0.0 and the
    apiserver's compatibility-version checks reject the built-in API versions."""
    major, minor = version.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    return [
        f"-X {package}.{name}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for name, value in values.items()
    ]


def build_steps(out_dir: Path, pins: Pins, tools_dir: Path = TOOLS_DIR) -> list[BuildStep]:
    # A fixed build date keeps two builds of one key byte-identical.
    build_date = "1970-01-01T00:00:00Z"
    go_build = ("go", "build", "-trimpath")
    strip = ["-s", "-w"]
    controlplane, helm = tools_dir / "controlplane", tools_dir / "helm"
    kube_ldflags = " ".join(strip + kube_version_ldflags(pins.kubernetes, build_date))
    helm_ldflags = " ".join(
        strip
        + [
            f"-X {HELM_MODULE}/internal/version.version={pins.helm}",
            f"-X {HELM_MODULE}/internal/version.metadata=",
            f"-X {HELM_MODULE}/internal/version.gitTreeState=clean",
        ]
    )
    return [
        # One invocation for the four: they share most packages, so go links them in parallel.
        BuildStep(
            ", ".join(KUBE_COMMANDS),
            controlplane,
            (*go_build, "-ldflags", kube_ldflags, "-o", f"{out_dir}/", *(f"{KUBERNETES_MODULE}/cmd/{c}" for c in KUBE_COMMANDS)),
        ),
        # etcd's main package is the module root, which go would name `v3`.
        BuildStep("etcd", controlplane, (*go_build, "-ldflags", " ".join(strip), "-o", f"{out_dir}/etcd", ETCD_MODULE)),
        BuildStep("helm", helm, (*go_build, "-ldflags", helm_ldflags, "-o", f"{out_dir}/helm", f"{HELM_MODULE}/cmd/helm")),
    ]


def _complete(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in BINARIES)


def log(message: str) -> None:
    print(f"kubespeed: {message}", file=sys.stderr, flush=True)


def ensure_binaries(tools_dir: Path = TOOLS_DIR, root: Path | None = None) -> Path:
    """The bin folder for the current pins, building it first if this machine lacks it."""
    root = root or cache_root()
    pins = read_pins(tools_dir)

    def build(folder: Path) -> None:
        (folder / "bin").mkdir()
        log(f"building Kubernetes {pins.kubernetes}, etcd {pins.etcd}, helm {pins.helm} into {root / cache_key(tools_dir)}")
        log("a cold build takes tens of minutes on two cores; later runs reuse the result")
        run_steps(build_steps(folder / "bin", pins, tools_dir))

    return build_once(root, cache_key(tools_dir), lambda folder: _complete(folder / "bin"), build) / "bin"


def build_once(root: Path, key: str, complete: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """The folder `root/key`, made first by `build(folder)` if it is not `complete` yet.

    A file lock makes a second session (another pytest run, `kubespeed dev cluster`) wait for
    the first one's build instead of starting its own; the folder appears by one rename, so a
    reader never sees half of it.
    """
    folder = root / key
    if complete(folder):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete(folder):
            return folder
        if shutil.which("go") is None:
            raise BuildError(f"`go` is not on PATH; it is needed once to build {folder}")
        for abandoned in root.glob(f".{key}.*"):  # left by a build that was killed; we hold the lock
            shutil.rmtree(abandoned, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            build(staging)
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the binaries from other users
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def run_steps(steps: list[BuildStep]) -> None:
    for step in steps:
        started = time.monotonic()
        result = subprocess.run(step.argv, cwd=step.module_dir, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(
                f"`{' '.join(step.argv)}` in {step.module_dir} failed ({result.returncode}):\n{result.stderr[-8000:]}"
            )
        log(f"built {step.what} in {time.monotonic() - started:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubespeed_cli.dev.build", description=__doc__.split("\n")[0])
    parser.add_argument("--print-key", action="store_true", help="print the cache key and exit")
    args = parser.parse_args(argv)
    if args.print_key:
        print(cache_key())
        return 0
    try:
        print(ensure_binaries())
    except BuildError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
