"""Images the agent can run: the trainer image maps to this machine's kubespeed installation.

There is no container runtime, so an image is the local Python environment seen through
the pod's own root filesystem: the interpreter's `bin/` first on PATH, and the user,
working directory and entrypoint that the trainer image declares (kubespeed.wiring).
A user's image (`user_image`) is a Python environment of its own that has torch and
DeepSpeed but not kubespeed, with the user's program in its working directory.
A built image (`built_image`) is the real thing: its own root filesystem (mounted from
podman's storage) and the entrypoint, user, working directory and environment its
configuration declares, as tests/e2e/test_trainer_image.py runs the Dockerfile's trainer.
Any other image is refused as a real kubelet refuses an image it cannot pull.
"""

from __future__ import annotations

import site
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import kubespeed
from kubespeed import wiring

REPO = Path(__file__).resolve().parents[3]


def chart_trainer_image() -> str:
    """The image jobs name by default: the chart's trainer image."""
    values = yaml.safe_load((REPO / "charts" / "kubespeed" / "values.yaml").read_text())
    return values["trainer"]["image"]


SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class LocalImage:
    entrypoint: list[str]
    cmd: list[str]
    working_dir: str
    uid: int
    gid: int
    env: dict[str, str]
    # Paths a non-root user must be able to reach inside the pod (the interpreter may sit
    # under a 0700 home such as /root/.pyenv).
    traverse: list[str] = field(default_factory=list)
    # The image's own root filesystem; None: the machine's.
    root: str | None = None


def trainer_image() -> LocalImage:
    bin_dir = str(Path(sys.executable).parent)
    source = str(Path(kubespeed.__file__).resolve().parents[1])
    return LocalImage(
        entrypoint=list(wiring.TRAINER_ENTRYPOINT),
        cmd=[],
        working_dir=wiring.WORK_DIR,
        uid=wiring.TRAINER_UID,
        gid=wiring.TRAINER_GID,
        env={"PATH": f"{bin_dir}:{SYSTEM_PATH}", "PYTHONUNBUFFERED": "1"},
        traverse=sorted({sys.prefix, sys.base_prefix, str(Path(sys.base_prefix).resolve()), source}),
    )


def user_environment(folder: Path) -> Path:
    """A Python environment with this machine's torch and DeepSpeed, in which `import kubespeed` fails:
    a virtual environment whose one `.pth` line adds the site-packages of kubespeed's own. A
    folder named by a `.pth` line is searched for modules but its own `.pth` files are not
    read, so the editable install of kubespeed there is not either. Returns its `bin/`."""
    if not (folder / "bin" / "python3").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    (purelib,) = (folder / "lib").glob("python3*/site-packages")
    (purelib / "kubespeed-e2e-user-image.pth").write_text("".join(f"{path}\n" for path in site.getsitepackages()))
    return folder / "bin"


def user_image(bin_dir: Path, working_dir: Path, extra_env: dict[str, str], reachable: list[str]) -> LocalImage:
    """A user's image: its Python first on PATH, no entrypoint of its own, the program in `working_dir`."""
    return LocalImage(
        entrypoint=[],
        cmd=[],
        working_dir=str(working_dir),
        uid=wiring.TRAINER_UID,
        gid=wiring.TRAINER_GID,
        env={"PATH": f"{bin_dir}:{SYSTEM_PATH}", "PYTHONUNBUFFERED": "1", **extra_env},
        traverse=sorted({str(bin_dir.parent), str(working_dir), sys.prefix, sys.base_prefix, str(Path(sys.base_prefix).resolve()), *reachable}),
    )


def built_image(root: str, config: dict[str, Any]) -> LocalImage:
    """A built image: its files at `root`, its settings from `podman image inspect`'s `Config`."""
    user, _, group = (config.get("User") or "0").partition(":")
    return LocalImage(
        entrypoint=config.get("Entrypoint") or [],
        cmd=config.get("Cmd") or [],
        working_dir=config.get("WorkingDir") or "/",
        uid=int(user),
        gid=int(group or user),
        env=dict(entry.split("=", 1) for entry in config.get("Env") or []),
        root=root,
    )


class ImagePullError(Exception):
    """The image is not one this agent maps; the message names it, as ErrImagePull's does."""


def resolve(image: str, known: dict[str, LocalImage]) -> LocalImage:
    if image in known:
        return known[image]
    raise ImagePullError(
        f'Failed to pull image "{image}": the test node agent runs only {", ".join(sorted(known)) or "no images"} '
        "(mapped to the local kubespeed installation)"
    )
