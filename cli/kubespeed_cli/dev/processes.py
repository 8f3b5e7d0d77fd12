"""Child processes that cannot outlive whoever started them, and waiting for them to be ready.

Every component runs in its own session (so a Ctrl-C in the terminal reaches only the
parent, which then stops them in order) and with a parent-death signal (so a SIGKILLed
pytest or a crashed `kubespeed dev cluster` takes them down too, leaving nothing behind).
"""

from __future__ import annotations

import ctypes
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Resolved once in the parent: the child, between fork and exec, should only make the call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


class ControlPlaneError(RuntimeError):
    """A component did not start or did not become ready; the message holds its log's tail."""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        # The signal fires when the thread that forked us exits; the control plane is
        # started from the main thread, whose exit is the process's exit.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),
        )
    return Process(name, popen, log)


def stop(process: Process, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds; always reaped."""
    if process.running():
        process.popen.terminate()
        try:
            process.popen.wait(grace)
        except subprocess.TimeoutExpired:
            process.popen.kill()
    process.popen.wait()


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(ready: Callable[[], bool], what: str, watched: Sequence[Process], timeout: float) -> None:
    """Poll `ready`; fail at once, with the log, if a watched process exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        for process in watched:
            if not process.running():
                raise ControlPlaneError(
                    f"{process.name} exited with {process.popen.returncode} while waiting for {what}; "
                    f"last lines of {process.log}:\n{process.tail()}"
                )
        if ready():
            return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name} ({p.log}):\n{p.tail()}" for p in watched)
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
        time.sleep(0.25)
