"""A launcher and its ranks under torch elastic, with real processes: the step watchdog kills a
frozen rank but never the launcher, a rank dies with its launcher, rank 0 counts its starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from kubespeed import wiring
from kubespeed_trainer import elastic

WAIT_SECONDS = 60


def rank(code: str, env: dict[str, str]) -> subprocess.Popen:
    """A Python process standing for a rank: it runs `code` after importing the module under test."""
    program = f"import time\nfrom kubespeed_trainer import elastic\n{code}"
    return subprocess.Popen([sys.executable, "-c", program], env={**os.environ, **env})


@pytest.fixture
def watchdog(tmp_path: Path):
    server = elastic.RankWatchdog.start_in(str(tmp_path), "test")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    "name, code, killed",
    [
        ("a rank that stays in its step past the timeout is killed", "w = elastic.StepWatchdog(); w.arm(); time.sleep(60)", True),
        ("a rank whose steps are done is left alone", "w = elastic.StepWatchdog(); w.arm(); w.disarm(); time.sleep(3)", False),
        ("a rank stuck in its start-up past a start's bound is killed", "elastic.StepWatchdog().arm_for_startup(); time.sleep(60)", True),
    ],
)
def test_the_step_watchdog_kills_a_rank_whose_step_ran_out_and_never_the_launcher(watchdog, tmp_path, name, code, killed):
    # This test's process plays the launcher: torch's own server would SIGKILL it too.
    env = {wiring.ENV_STEP_TIMEOUT: "1", wiring.ENV_RENDEZVOUS_TIMEOUT: "1", **elastic.launcher_env(os.getpid(), str(tmp_path), watchdog)}
    proc = rank(code, env)
    try:
        returncode = proc.wait(timeout=WAIT_SECONDS)
    finally:
        proc.kill()
    assert (returncode == -signal.SIGKILL) is killed, (name, returncode)


def test_without_a_step_timeout_there_is_no_watchdog(monkeypatch):
    monkeypatch.delenv(wiring.ENV_STEP_TIMEOUT, raising=False)
    monkeypatch.delenv(elastic.TIMER_FILE_ENV, raising=False)
    watchdog = elastic.StepWatchdog()
    watchdog.arm()
    watchdog.disarm()
    assert watchdog.seconds is None


# Two "launchers" that start one rank and print its pid. As `kubespeed launch` does: forked from a
# forkserver, so the rank's parent is the forkserver and the launcher its grandparent.
FORKED = (
    "import multiprocessing, os, sys, time\n"
    "def rank(ready):\n"
    "    from kubespeed_trainer import elastic\n"
    "    elastic.die_with_launcher()\n"
    "    ready.put(os.getpid())\n"
    "    time.sleep(120)\n"
    "if __name__ == '__main__':\n"
    "    os.environ['KUBESPEED_LAUNCHER_PID'] = str(os.getpid())\n"
    "    context = multiprocessing.get_context('forkserver')\n"
    "    ready = context.Queue()\n"
    "    context.Process(target=rank, args=(ready,)).start()\n"
    "    print(ready.get(), flush=True)\n"
    "    time.sleep(120)\n"
)
# As torch elastic starts a program: a child of the launcher, in a session of its own.
IN_A_SESSION = (
    "import os, subprocess, sys, time\n"
    "env = {**os.environ, 'KUBESPEED_LAUNCHER_PID': str(os.getpid())}\n"
    "code = 'from kubespeed_trainer import elastic; elastic.die_with_launcher(); print(\"ready\", flush=True); import time; time.sleep(120)'\n"
    "child = subprocess.Popen([sys.executable, '-c', code], env=env, start_new_session=True, stdout=subprocess.PIPE, text=True)\n"
    "assert child.stdout.readline().strip() == 'ready'\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.mark.parametrize("launcher_code", [FORKED, IN_A_SESSION], ids=["forked from the launcher's forkserver", "in a session of its own"])
def test_a_rank_dies_with_its_launcher_when_the_launcher_is_killed(tmp_path, launcher_code):
    script = tmp_path / "launcher.py"
    script.write_text(launcher_code)
    launcher = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        rank = psutil.Process(int(launcher.stdout.readline()))
        if launcher_code is FORKED:
            assert rank.ppid() != launcher.pid and psutil.Process(rank.ppid()).ppid() == launcher.pid
        launcher.kill()
        launcher.wait()
        gone, alive = psutil.wait_procs([rank], timeout=WAIT_SECONDS)
    finally:
        launcher.kill()
    assert gone and not alive, "the rank outlived its launcher"


def test_a_rank_registers_under_its_launcher_names_its_process_and_leaves_its_exit_code(tmp_path):
    code = "elastic.register_rank(); print('ready', flush=True); time.sleep(float(input())); elastic.record_exit(143)"
    proc = subprocess.Popen([sys.executable, "-c", f"import time\nfrom kubespeed_trainer import elastic\n{code}"],
                            env={**os.environ, elastic.LAUNCH_DIR_ENV: str(tmp_path), "RANK": "5", "LOCAL_RANK": "1"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert elastic.live_ranks(str(tmp_path)) == {proc.pid: {"rank": 5, "localRank": 1}}
        assert psutil.Process(proc.pid).name() == "rank5-local1"
        assert elastic.exit_code_of(str(tmp_path), proc.pid) is None
        proc.communicate("0\n", timeout=WAIT_SECONDS)
    finally:
        proc.kill()
    assert elastic.exit_code_of(str(tmp_path), proc.pid) == 143
    assert elastic.live_ranks(str(tmp_path)) == {}


def test_rank_0_counts_its_starts_under_one_launcher(monkeypatch, tmp_path):
    monkeypatch.setenv(elastic.LAUNCH_DIR_ENV, str(tmp_path))
    assert [elastic.count_start() for _ in range(3)] == [0, 1, 2]
    monkeypatch.setenv(elastic.LAUNCH_DIR_ENV, str(tmp_path / "another-launcher"))
    (tmp_path / "another-launcher").mkdir()
    assert elastic.count_start() == 0


def test_without_a_launcher_a_rank_counts_nothing(monkeypatch):
    monkeypatch.delenv(elastic.LAUNCH_DIR_ENV, raising=False)
    assert elastic.count_start() == 0
