"""Starts one container of a pod: runs between the agent and the container's command.

    python podinit.py <container.json>

The agent starts this script (stdlib only, a fresh single-threaded process, so no locks
are held across fork) for each container. It puts itself into the pod's network
namespace, makes private mount, UTS and PID namespaces, builds the container's root
filesystem, and forks the command as PID 1 of the new PID namespace. It then stays
outside as the command's parent: it forwards termination signals to it (as a container
runtime delivers SIGTERM to the container's PID 1, nothing else), and exits with the
command's exit status, 128+N after signal N, like a container runtime reports it.

The root filesystem is a tmpfs whose entries are bind mounts of the machine's `/`, so
the pod sees the local Python installation, while its own files sit on top at the paths
its spec names. For an image with files of its own (`imageRoot`: a built image's root,
mounted by podman) the entries are the image's, bound read-only, with the machine's /dev
and /sys, as a container runtime gives a container. A mount path that does not exist on
the machine (or in the image) gets a mount point on a tmpfs laid over its parent (the parent's entries bound back into it), so nothing is ever
created on the machine's filesystems. Every mount lives in the pod's mount namespace
and disappears with its last process; the machine's mount table never changes.

If the agent dies, PR_SET_PDEATHSIG kills this process, whose own death kills PID 1 of
the pod's PID namespace, and with it the kernel kills every process of the pod.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import stat
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
START_ERROR_EXIT = 128
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                      data.encode() if data else None), f"mount {source} on {target}")  # fmt: skip


def umount(target: str) -> None:
    _check(libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


class RootBuilder:
    """Lays out the container's root under `root`, tracking which directories are ours
    (on a tmpfs we made, so mount points may be created there) and which are the machine's."""

    def __init__(self, root: str, stage: str, image_root: str | None = None) -> None:
        self.root = root
        self.stage = stage
        self.owned: set[str] = set()
        # An image's files are shared by every pod that runs it: no pod may change them.
        self.image_root = image_root

    def host(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def build(self, private: dict[str, str]) -> None:
        """`private` maps top-level paths (/tmp) to the pod's own directories for them."""
        mount("tmpfs", self.root, "tmpfs", MS_NOSUID, "mode=0755")
        self.owned.add(self.root)
        source_root = self.image_root or "/"
        if self.image_root:
            private = {"/dev": "/dev", "/sys": "/sys", **private}
        for name in sorted(os.listdir(source_root)):
            top = "/" + name
            if top == "/proc":
                os.mkdir(self.host(top), 0o555)
                continue
            source = os.path.join(source_root, name)
            self._replicate(source, self.host(top), private.get(top, source), read_only=bool(self.image_root) and top not in private)

    def _replicate(self, source_path: str, target: str, bind_from: str, read_only: bool = False) -> None:
        """Make `target` show what `bind_from` holds (a bind mount) or is (a symlink)."""
        info = os.lstat(source_path)
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(source_path), target)
            return
        if stat.S_ISDIR(info.st_mode):
            os.mkdir(target, stat.S_IMODE(info.st_mode))
            mount(bind_from, target, None, MS_BIND | MS_REC)
        else:
            with open(target, "w"):
                pass
            mount(bind_from, target, None, MS_BIND)
        if read_only:
            mount(bind_from, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)

    def shadow(self, path: str, keep: set[str] | None = None, mode: int | None = None) -> None:
        """Lay a tmpfs over the machine's directory `path` (inside the root) with its entries
        (or only those in `keep`) bound back in, so that new names can be made there."""
        target = self.host(path)
        info = os.stat(target)
        # An image's directory stays read-only under the tmpfs: its entries are bound back read-only.
        read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        os.makedirs(self.stage, exist_ok=True)
        mount(target, self.stage, None, MS_BIND | MS_REC)
        mount("tmpfs", target, "tmpfs", MS_NOSUID, f"mode={oct(mode if mode is not None else stat.S_IMODE(info.st_mode))[2:]}")
        os.chown(target, info.st_uid, info.st_gid)
        for name in sorted(os.listdir(self.stage)):
            if keep is None or name in keep:
                entry = os.path.join(self.stage, name)
                self._replicate(entry, os.path.join(target, name), entry, read_only)
        umount(self.stage)
        self.owned.add(target)

    def ensure(self, path: str, directory: bool, owner: tuple[int, int] | None = None) -> str:
        """The mount point for `path` inside the root, made on a tmpfs if the machine lacks it."""
        current = "/"
        parts = [p for p in path.split("/") if p]
        for index, name in enumerate(parts):
            parent = current
            current = os.path.join(current, name)
            target = self.host(current)
            if os.path.lexists(target):
                continue
            if self.host(parent).rstrip("/") not in {o.rstrip("/") for o in self.owned}:
                self.shadow(parent)
            last = index == len(parts) - 1
            if last and not directory:
                with open(target, "w"):
                    pass
            else:
                os.mkdir(target, 0o755)
                self.owned.add(target)
                if owner is not None:
                    os.chown(target, *owner)
        return self.host(path)

    def make_traversable(self, path: str) -> None:
        """Let a non-root user reach `path`: an ancestor closed to others (/root is 0700) is
        shadowed by a 0755 tmpfs that holds only the next name on the way."""
        current = "/"
        for name in [p for p in path.split("/") if p]:
            parent = current
            current = os.path.join(current, name)
            if parent != "/" and not os.stat(self.host(parent)).st_mode & stat.S_IXOTH:
                self.shadow(parent, keep={name}, mode=0o755)

    def bind(self, source: str, target: str, read_only: bool) -> None:
        point = self.ensure(target, os.path.isdir(source))
        mount(source, point, None, MS_BIND | MS_REC)
        self.owned.discard(point)
        if read_only:
            mount(source, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)

    def tmpfs(self, target: str, options: str) -> None:
        point = self.ensure(target, True)
        mount("tmpfs", point, "tmpfs", MS_NOSUID | MS_NODEV, options)
        self.owned.add(point)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def hidden(image_paths: list[str], covered: list[str]) -> list[str]:
    """The image's paths (the interpreter, the kubespeed source) that the pod's private /tmp
    or one of its volumes lies over, outermost only: a checkout under /tmp (as CI's may be)
    must stay visible, as the files of a real image would."""
    paths = sorted(p for p in image_paths if any(_under(p, top) for top in covered))
    return [p for i, p in enumerate(paths) if not any(_under(p, q) for q in paths[:i])]


def prepare(spec: dict[str, Any]) -> RootBuilder:
    netns = os.open(spec["netns"], os.O_RDONLY)
    _check(libc.setns(netns, CLONE_NEWNET), "setns net")
    os.close(netns)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID), "unshare")
    socket.sethostname(spec["hostname"])
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    builder = RootBuilder(spec["root"], spec["stage"], spec.get("imageRoot"))
    builder.build({"/tmp": spec["tmp"]})
    builder.tmpfs("/dev/shm", "mode=1777,size=64m")
    uid, gid = spec["uid"], spec["gid"]
    for item in sorted(spec["mounts"], key=lambda m: m["target"].count("/")):
        if item["kind"] == "tmpfs":
            builder.tmpfs(item["target"], "mode=1777")
        else:
            builder.bind(item["source"], item["target"], item["readOnly"])
    covered = ["/tmp", "/dev/shm", *(item["target"] for item in spec["mounts"])]
    for path in hidden(spec["imagePaths"], covered):
        builder.bind(path, path, read_only=True)
    for path in spec["traverse"]:
        builder.make_traversable(path)
    builder.ensure(spec["workingDir"], True, owner=(uid, gid))
    return builder


def run_command(spec: dict[str, Any], builder: RootBuilder, error_file: str) -> None:
    """In the forked child (PID 1 of the pod's PID namespace): become the container."""
    try:
        mount("proc", builder.host("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.chroot(builder.root)
        os.chdir(spec["workingDir"])
        os.setgroups(spec["groups"])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
        # Set after setuid: a change of credentials clears the parent-death signal.
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL), "prctl")
        for number in FORWARDED_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        os.execvpe(spec["command"][0], spec["command"], spec["env"])
    except OSError as error:
        with open(error_file, "w") as out:
            out.write(f"failed to start {spec['command'][0]!r}: {error}")
    os._exit(START_ERROR_EXIT)


def main(argv: list[str]) -> int:
    with open(argv[0]) as handle:
        spec = json.load(handle)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL), "prctl")
    if os.getppid() != spec["agentPid"]:
        return START_ERROR_EXIT
    error_file = spec["errorFile"]
    child = 0

    def forward(received: int, _frame: object) -> None:
        if child:
            try:
                os.kill(child, received)
            except ProcessLookupError:
                pass

    for number in FORWARDED_SIGNALS:
        signal.signal(number, forward)
    try:
        builder = prepare(spec)
    except OSError as error:
        with open(error_file, "w") as out:
            out.write(f"failed to set up the container: {error}")
        return START_ERROR_EXIT
    # The child's copy of `ready` closes when exec succeeds (or the child dies), which
    # tells the agent the container runs: only then is it reported Running.
    wait, ready = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(wait)
        run_command(spec, builder, error_file)
    os.close(ready)
    os.read(wait, 1)
    os.close(wait)
    with open(spec["startedFile"], "w") as out:
        out.write(str(child))
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
