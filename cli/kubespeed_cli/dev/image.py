"""Build the operator and trainer images on a machine with no registry access and no Docker engine.

    python -m kubespeed_cli.dev.image [--target trainer]   # one JSON line: the image, build seconds, sizes

The Dockerfile's bases are arguments (PYTHON_BASE; TRAINER_BUILD_BASE and TRAINER_BASE).
Here one base is made from Debian's own packages with mmdebstrap (Debian's archive is
reachable where public container registries are not), imported with podman, and the
target is built from it with podman (buildah inside). The trainer stages get bookworm's
Python and no prebuilt DeepSpeed ops in place of their CUDA defaults (TRAINER_BUILD_ARGS):
the same pins, a plain base. Containers storage is the `vfs` driver, which needs no
overlay or fuse support from the machine, kept under the kubespeed cache with the base.

The base is keyed by its package list; an image by its recipe (`recipe_key(target)`: the
target's stages of the Dockerfile with the global ARGs they use, the dependency pins in
pyproject.toml, .dockerignore, the base and the build arguments) and the files of the
build context (`image_key(target)`): an unchanged key reuses what was built before. The
recipe keys are what tests/e2e/test_operator_image.py and test_trainer_image.py remember
as proven; an edit to the trainer stages leaves the operator's key alone and the reverse.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the Dockerfile's operator stages need of a base: Python 3.11 with venv (bookworm's
# python3 is 3.11) and the CA certificates pip and the operator's client verify with.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_RECIPE = "1"
IMAGE_INPUTS = ("pyproject.toml", ".dockerignore")
# The stages each target is built from.
STAGES = {"operator": ("operator-build", "operator"), "trainer": ("trainer-build", "trainer")}
# The trainer stages on the Debian base: its Python 3.11 (the CUDA default names Ubuntu 24.04's
# 3.12) and no prebuilt DeepSpeed ops, which need nvcc; a job's first use of an op such as
# CPUAdam (ZeRO-Offload) compiles it with the image's g++.
TRAINER_BUILD_ARGS = {"TRAINER_PYTHON": "python3.11", "DS_BUILD_OPS": ""}
TOOLS = ("mmdebstrap", "podman", "runc")


class ImageError(RuntimeError):
    """A build step failed; the message carries the tool's own output."""


def cache_root() -> Path:
    return Path(os.environ.get("KUBESPEED_CACHE") or Path.home() / ".cache" / "kubespeed") / "images"


def storage_args(root: Path | None = None) -> list[str]:
    root = root or cache_root()
    return ["--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "vfs"]


# crun refuses a machine whose cgroup v2 hierarchy sits beside v1 controllers ("hybrid");
# runc with plain cgroupfs accepts it.
RUNTIME_ARGS = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def ulimit_args() -> list[str]:
    """Modest open-file and process limits: as root, podman would raise them to 1048576 and
    4194304, which a machine with lower hard limits refuses (EPERM; this VM refuses even its
    own hard limit). A build and the operator need far fewer."""
    flags = []
    for name, limit, wanted in (("nofile", resource.RLIMIT_NOFILE, 8192), ("nproc", resource.RLIMIT_NPROC, 4096)):
        hard = resource.getrlimit(limit)[1]
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        flags += ["--ulimit", f"{name}={value}:{value}"]
    return flags


def base_key() -> str:
    digest = hashlib.sha256(f"{BASE_RECIPE}\0{SUITE}\0{MIRROR}\0{','.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    return f"debian-{SUITE}-python-{digest}"


def build_args(target: str) -> dict[str, str]:
    base = f"localhost/kubespeed-base:{base_key()}"
    if target == "operator":
        return {"PYTHON_BASE": base}
    return {"TRAINER_BUILD_BASE": base, "TRAINER_BASE": base, **TRAINER_BUILD_ARGS}


def dockerfile_recipe(text: str, stages: tuple[str, ...]) -> str:
    """The instructions that building `stages` reads: those stages and the global ARGs they
    name. Comments, blank lines and the other stages are left out."""
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    chunks: list[list[str]] = [[]]
    for line in filter(str.strip, logical.splitlines()):
        if line.split()[0].upper() == "FROM":
            chunks.append([])
        chunks[-1].append(" ".join(line.split()))
    kept = [chunk for chunk in chunks[1:] if chunk[0].split()[-1] in stages]
    used = set(re.findall(r"\$\{?(\w+)", "\n".join(line for chunk in kept for line in chunk)))
    used |= {line.split()[1] for chunk in kept for line in chunk if line.split()[0].upper() == "ARG"}
    preamble = [line for line in chunks[0] if line.split()[0].upper() == "ARG" and re.split(r"[ =]", line)[1] in used]
    return "\n".join(preamble + [line for chunk in kept for line in chunk])


def recipe_key(target: str = "operator", repo: Path = REPO) -> str:
    """What decides how the target is made: its stages of the Dockerfile, the pins, the context
    filter, the base and the build arguments."""
    digest = hashlib.sha256(base_key().encode())
    digest.update(json.dumps(build_args(target), sort_keys=True).encode())
    digest.update(dockerfile_recipe((repo / "Dockerfile").read_text(), STAGES[target]).encode())
    for name in IMAGE_INPUTS:
        digest.update(name.encode() + b"\0" + (repo / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def context_files(repo: Path = REPO) -> list[Path]:
    """The build context as .dockerignore's allowlist (`*`, then `!path` entries) lets it in."""
    allowed = [line[1:].rstrip("/") for line in (repo / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    files = []
    for entry in allowed:
        path = repo / entry
        found = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [f for f in found if f.is_file() and "__pycache__" not in f.parts and ".egg-info" not in str(f) and f.suffix != ".pyc"]
    return files


def image_key(target: str = "operator", repo: Path = REPO) -> str:
    """The recipe and every file of the build context: an image is reused only for the same code."""
    digest = hashlib.sha256(recipe_key(target, repo).encode())
    for path in context_files(repo):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@dataclass
class Built:
    image: str
    base: str
    base_seconds: float | None  # None: reused from the cache
    image_seconds: float | None
    base_bytes: int
    image_bytes: int


def _run(argv: list[str], what: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"{what}: `{' '.join(argv)}` failed ({result.returncode}):\n{(result.stderr or result.stdout)[-6000:]}")
    return result.stdout


def podman(*args: str) -> list[str]:
    return ["podman", *storage_args(), *RUNTIME_ARGS, *args]


def _exists(image: str) -> bool:
    return subprocess.run(podman("image", "exists", image), capture_output=True).returncode == 0


def _size(image: str) -> int:
    return int(_run(podman("image", "inspect", "--format", "{{.Size}}", image), f"the size of {image}").strip())


def _host_pip_mounts() -> list[str]:
    """This machine's pip configuration and CA bundle, seen by the build's RUN steps but never
    stored in the image: behind a TLS-inspecting proxy, pip in the build trusts what pip here trusts."""
    mounts = []
    for path in {Path("/etc/pip.conf"), Path(os.environ.get("PIP_CERT", "/etc/pip.conf"))}:
        if path.is_file():
            mounts += ["--volume", f"{path}:{path}:ro"]
    return mounts


def _remove_older(image: str) -> None:
    """Older builds of the image: vfs keeps each as full copies, so they are not kept."""
    repository = image.rpartition(":")[0]
    listed = _run(podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository), "listing images")
    for old in set(listed.split()) - {image}:
        subprocess.run(podman("rmi", old), capture_output=True)


def ensure_base() -> tuple[str, float | None]:
    image = f"localhost/kubespeed-base:{base_key()}"
    if _exists(image):
        return image, None
    started = time.monotonic()
    tarball = cache_root() / f"{base_key()}.tar"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial.tar")
    _run(["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(partial), MIRROR],
         "the Debian base")  # fmt: skip
    _run(podman("import", "--change", "CMD=/bin/sh", str(partial), image), "importing the Debian base")
    partial.unlink()
    return image, time.monotonic() - started


def ensure_image(target: str, repo: Path = REPO) -> Built:
    """The target's image for this checkout's Dockerfile and pins, built first if missing."""
    absent = missing_tools()
    if absent:
        raise ImageError(f"{', '.join(absent)} not found; on Debian: apt-get install mmdebstrap podman runc")
    base, base_seconds = ensure_base()
    image = f"localhost/kubespeed-{target}:{image_key(target, repo)}"
    image_seconds = None
    if not _exists(image):
        started = time.monotonic()
        arguments = [flag for name, value in build_args(target).items() for flag in ("--build-arg", f"{name}={value}")]
        _run(podman("build", "--network", "host", "--layers=false", *ulimit_args(), *_host_pip_mounts(), *arguments,
                    "--target", target, "--tag", image, str(repo)), f"building the {target} image")  # fmt: skip
        image_seconds = time.monotonic() - started
        _remove_older(image)
    return Built(image, base, base_seconds, image_seconds, _size(base), _size(image))


def ensure_operator_image(repo: Path = REPO) -> Built:
    return ensure_image("operator", repo)


def ensure_trainer_image(repo: Path = REPO) -> Built:
    return ensure_image("trainer", repo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubespeed_cli.dev.image", description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=sorted(STAGES), default="operator", help="the Dockerfile target to build (default: operator)")
    target = parser.parse_args(argv).target
    try:
        built = ensure_image(target)
    except ImageError as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps({**asdict(built), "target": target, "build_args": build_args(target), "storage_driver": "vfs",
                      "suite": SUITE, "packages": list(BASE_PACKAGES)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
