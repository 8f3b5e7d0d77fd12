"""Each pod a local process group; the gang lives and dies together, as on the cluster.

A pod's process (the launcher) runs in a session of its own, so a terminal's Ctrl-C
reaches only `kubespeed local`, which then stops the gang the way the kubelet stops a
pod: SIGTERM to the pod's main process (a container runtime signals only its PID 1,
which passes it on), the grace period, then SIGKILL to the pod's process group, as a
pod's processes die with its PID 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubespeed_cli.local.rewire import LocalPod
from kubespeed_operator.decide.recovery import STALLED_GRACE_SECONDS

POLL_SECONDS = 0.25
# What the kubelet reads of a termination log, and of a log's tail when that is empty (FallbackToLogsOnError).
MAX_MESSAGE_BYTES = 4096
MAX_LOG_TAIL_BYTES, MAX_LOG_TAIL_LINES = 2048, 80


@dataclass
class Interrupt:
    """Set from the SIGINT/SIGTERM handler; a second signal skips the grace period."""

    count: int = 0

    def handle(self, signum: int, frame: object) -> None:
        self.count += 1


def start_pod(pod: LocalPod, attempt: int) -> subprocess.Popen:
    """Start the pod's command in its own session (so its own process group), logging to the pod's log."""
    pod.log.parent.mkdir(parents=True, exist_ok=True)
    pod.cwd.mkdir(parents=True, exist_ok=True)
    if pod.termination_log is not None:
        # Each container starts with an empty one, as the kubelet gives it.
        pod.termination_log.parent.mkdir(parents=True, exist_ok=True)
        pod.termination_log.write_bytes(b"")
    with open(pod.log, "ab") as log:
        log.write(f"--- kubespeed local: {pod.name}, attempt {attempt}: {' '.join(pod.argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            pod.argv,
            env={**os.environ, **pod.env},
            cwd=pod.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _tail(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read()
    except OSError:
        return b""


def termination_message(pod: LocalPod, code: int) -> str | None:
    """Why the pod's container ended, as the kubelet reports it: its termination log, else for a
    failure (FallbackToLogsOnError) the end of its log."""
    message = _tail(pod.termination_log, MAX_MESSAGE_BYTES) if pod.termination_log else b""
    if not message.strip() and code != 0:
        message = b"\n".join(_tail(pod.log, MAX_LOG_TAIL_BYTES).splitlines()[-MAX_LOG_TAIL_LINES:])
    return message.decode(errors="replace") or None


def exit_code(returncode: int) -> int:
    """A shell-style exit code: killed by signal N reads as 128+N, as the kubelet reports it."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_gang(procs: list[subprocess.Popen], grace_seconds: float, interrupt: Interrupt) -> None:
    """SIGTERM every pod's main process, wait out the grace period (or a second Ctrl-C), then SIGKILL what is left.

    The groups are killed even when their leader already exited, so no rank outlives the run.
    """
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    seen = interrupt.count
    deadline = time.monotonic() + grace_seconds
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline and interrupt.count == seen:
        time.sleep(POLL_SECONDS)
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    for proc in procs:
        _wait_group_gone(proc)


def _wait_group_gone(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Until the pod's process group has no member left (SIGKILL is delivered, not done, when sent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)


@dataclass(frozen=True)
class AttemptResult:
    exit_code: int
    interrupted: bool
    failed_pod: str | None = None
    failed_rank: int | None = None
    # The failed pod's termination message.
    message: str | None = None
    # Why the gang was stopped while its pods ran (its step stayed silent), if it was.
    stalled: str | None = None


def run_gang(
    pods: list[LocalPod],
    attempt: int,
    grace_seconds: float,
    interrupt: Interrupt,
    on_tick: Callable[[], str | None],
) -> AttemptResult:
    """Run one attempt: all pods succeed, or the first failure (or Ctrl-C, or a stall `on_tick`
    reports) stops the whole gang.

    `pods` are in node-rank order."""
    procs = [start_pod(pod, attempt) for pod in pods]
    try:
        while True:
            stalled = on_tick()
            if stalled:
                stop_gang(procs, STALLED_GRACE_SECONDS, interrupt)
                return AttemptResult(exit_code(procs[0].returncode), interrupted=False, stalled=stalled)
            if interrupt.count:
                print(f"stopping: each pod's ranks write a checkpoint first (up to {grace_seconds:g} s; Ctrl-C again kills them now)",
                      file=sys.stderr, flush=True)
                stop_gang(procs, grace_seconds, interrupt)
                return AttemptResult(exit_code(procs[0].returncode), interrupted=True)
            codes = [p.poll() for p in procs]
            failed = [(rank, exit_code(c)) for rank, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                stop_gang(procs, grace_seconds, interrupt)
                rank, code = failed[0]
                return AttemptResult(code, interrupted=False, failed_pod=pods[rank].name, failed_rank=rank,
                                     message=termination_message(pods[rank], code))
            if all(c == 0 for c in codes):
                stop_gang(procs, 0, interrupt)
                return AttemptResult(0, interrupted=False)
            time.sleep(POLL_SECONDS)
    finally:
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
