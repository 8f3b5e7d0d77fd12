"""A pod's launcher and its ranks under torch elastic: what the launcher hands its ranks, and what a rank does with it.

- The ranks are forked from the launcher's forkserver, which imported torch once: a
  rank, at the start and at every in-place restart, skips the seconds of importing it
  that are most of a restart. So a rank's parent is the forkserver, which ends with the
  launcher, and its command line and environment as `ps` shows them are the
  forkserver's. Each rank registers itself in the launcher's folder (`ranks/<pid>.json`,
  its global and local rank) and leaves its exit code there (`ranks/<pid>.exit`): the
  launcher's SIGTERM forwarder, and people, find the ranks and how they ended there.
- A rank dies with its launcher, even one killed outright (under `kubespeed local`; a
  pod's PID namespace ends with its launcher anyway): it asks the kernel for SIGKILL
  when its parent, the forkserver, dies, and lets go of the forkserver's pipe to the
  launcher, so that the forkserver ends when the launcher does.
- Each training step runs under torch elastic's watchdog, its FileTimer: a rank that
  stays in one step longer than the job allows (KUBESPEED_STEP_TIMEOUT) is killed by
  the launcher, whose agent then restarts the ranks in place. A frozen process is
  alive, so nothing else in the pod would notice. A rank's start-up (loading, the
  process group, the checkpoint) runs under the same watchdog with the bound of a
  start (KUBESPEED_RENDEZVOUS_TIMEOUT), since the operator judges silence only from
  the first step. The launcher runs the timer server
  itself rather than asking the agent to (TORCHELASTIC_ENABLE_FILE_TIMER): torch
  2.13's server, after killing a rank, kills its own process too, with the same
  SIGKILL, which would end the pod instead of restarting the ranks in it.
- Rank 0 counts its starts under one launcher: every start after the first is an
  in-place restart of the gang (every round of the rendezvous restarts every node's
  ranks), which rank 0's metrics report to the operator. torch's own
  TORCHELASTIC_RESTART_COUNT counts only the failures of a node's own ranks, so it
  differs between nodes and cannot say this.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing.forkserver
import os
import signal
import time
from pathlib import Path

import psutil

from torch.distributed.elastic import timer
from torch.distributed.elastic.timer import FileTimerServer

from kubespeed import wiring

LAUNCHER_PID_ENV = "KUBESPEED_LAUNCHER_PID"
LAUNCH_DIR_ENV = "KUBESPEED_LAUNCH_DIR"
# torch elastic's name for the FIFO a FileTimerServer reads (the agent passes it on to its ranks).
TIMER_FILE_ENV = "TORCHELASTIC_TIMER_FILE"
TIMER_FILE = "step-watchdog"
STARTS_FILE = "rank0-starts"
RANKS_DIR = "ranks"
WATCHDOG_SCOPE = "kubespeed-step"
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
# The kernel keeps 15 bytes of a process's name.
PROCESS_NAME_BYTES = 15


class RankWatchdog(FileTimerServer):
    """torch elastic's FileTimerServer, which kills a rank whose timer ran out, but never its own process."""

    @classmethod
    def start_in(cls, launch_dir: str, run_id: str) -> RankWatchdog:
        server = cls(file_path=str(Path(launch_dir) / TIMER_FILE), run_id=run_id, max_interval=0.1, daemon=True)
        server.start()
        return server

    @property
    def file_path(self) -> str:
        return self._file_path

    def _reap_worker(self, worker_pid: int, signal: int) -> bool:
        if worker_pid == os.getpid():
            return True
        return super()._reap_worker(worker_pid, signal)


def launcher_env(launcher_pid: int, launch_dir: str, watchdog: RankWatchdog | None) -> dict[str, str]:
    """What the launcher puts in its environment for its ranks: its pid, a folder of its own, its watchdog's FIFO."""
    env = {LAUNCHER_PID_ENV: str(launcher_pid), LAUNCH_DIR_ENV: launch_dir}
    if watchdog is not None:
        env[TIMER_FILE_ENV] = watchdog.file_path
    return env


def die_with_launcher() -> None:
    """SIGKILL this rank when its launcher dies; exit now if that already happened. No launcher: nothing.

    The signal comes when the rank's parent dies: the launcher, or the launcher's
    forkserver, which exits as soon as the launcher is gone.
    """
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher:
        return
    _let_the_forkserver_go()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return
    # The parent may have died before the line above: then this rank was handed to someone else.
    parent = os.getppid()
    if parent != int(launcher) and _parent_of(parent) != int(launcher):
        os._exit(wiring.EXIT_RETRYABLE.code)


def _let_the_forkserver_go() -> None:
    """Close this rank's copy of the pipe by which the forkserver knows its launcher lives.

    The forkserver exits when the launcher's end of that pipe closes, but each process it
    forks inherits a copy of that end: while a rank kept it open, a dead launcher's
    forkserver would live on, and the signal the rank asked for at its parent's death
    would never come.
    """
    server = multiprocessing.forkserver._forkserver
    if isinstance(server._forkserver_alive_fd, int):
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def _parent_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def register_rank() -> None:
    """Note this rank (its pid, global and local rank) in its launcher's folder, and name its
    process after its ranks (`rank3-local1`, what `ps` and `top` show). No launcher: nothing."""
    folder = _ranks_dir()
    if folder is None:
        return
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    folder.mkdir(exist_ok=True)
    (folder / f"{os.getpid()}.json").write_text(json.dumps({"rank": rank, "localRank": local}))
    ctypes.CDLL(None).prctl(PR_SET_NAME, process_name(rank, local).encode()[:PROCESS_NAME_BYTES])


def process_name(rank: int, local_rank: int) -> str:
    return f"rank{rank}-local{local_rank}"


def record_exit(code: int) -> None:
    """Leave this rank's exit code beside its registration, for the launcher to read."""
    folder = _ranks_dir()
    if folder is not None:
        (folder / f"{os.getpid()}.exit").write_text(str(code))


def live_ranks(launch_dir: str) -> dict[int, dict[str, int]]:
    """The ranks of this launcher still alive: {pid: {"rank": .., "localRank": ..}}."""
    found = {}
    for path in (Path(launch_dir) / RANKS_DIR).glob("*.json"):
        pid = int(path.stem)
        try:
            # A pid of a rank gone in an earlier round may be some later process's.
            if psutil.Process(pid).create_time() <= path.stat().st_mtime + 1:
                found[pid] = json.loads(path.read_text())
        except (psutil.Error, OSError, ValueError):
            continue
    return found


def exit_code_of(launch_dir: str, pid: int) -> int | None:
    """The code a rank of this launcher said it exits with; None if it died without saying (killed)."""
    try:
        return int((Path(launch_dir) / RANKS_DIR / f"{pid}.exit").read_text())
    except (OSError, ValueError):
        return None


def _ranks_dir() -> Path | None:
    folder = os.environ.get(LAUNCH_DIR_ENV)
    return Path(folder) / RANKS_DIR if folder else None


def count_start() -> int:
    """Record one more start of rank 0 under this launcher; returns the starts before it (the in-place restarts)."""
    folder = os.environ.get(LAUNCH_DIR_ENV)
    if not folder:
        return 0
    path = Path(folder) / STARTS_FILE
    try:
        before = int(path.read_text())
    except (OSError, ValueError):
        before = 0
    path.write_text(str(before + 1))
    return before


class StepWatchdog:
    """Each step under torch elastic's FileTimer when the launcher set a step timeout; else nothing.

    `arm()` at the start of every step (re)starts this rank's countdown; `disarm()`
    once the steps are done. A rank still in a step when the countdown ends is
    killed by its launcher's timer server.
    """

    def __init__(self) -> None:
        seconds, fifo = os.environ.get(wiring.ENV_STEP_TIMEOUT), os.environ.get(TIMER_FILE_ENV)
        startup = os.environ.get(wiring.ENV_RENDEZVOUS_TIMEOUT)
        self.seconds = int(seconds) if seconds and fifo else None
        self.startup_seconds = int(startup) if startup and self.seconds else None
        self._client = timer.FileTimerClient(fifo) if self.seconds and fifo else None

    def arm_for_startup(self) -> None:
        """Start this rank's countdown to its first step, which `arm()` then takes over."""
        if self._client is not None and self.startup_seconds is not None:
            self._client.acquire(WATCHDOG_SCOPE, time.time() + self.startup_seconds)

    def arm(self) -> None:
        if self._client is not None and self.seconds is not None:
            self._client.acquire(WATCHDOG_SCOPE, time.time() + self.seconds)

    def disarm(self) -> None:
        if self._client is not None:
            self._client.release(WATCHDOG_SCOPE)
