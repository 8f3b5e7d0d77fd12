"""Every benchmark in bench/ still starts: its imports (some reach into the test helpers,
which move with the tests) and its arguments parse. The figures themselves are the
benchmarks' business, run by hand (README says how); tests never time anything. What
train_shakespeare's interleaved mode rests on is tested here: the rates from records and
the intervals a run was resumed in, and freezing a process tree and cleaning it up."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((REPO / "bench").glob("*.py"))


def test_the_benchmarks_are_found() -> None:
    assert {path.name for path in BENCHMARKS} >= {"recovery.py", "operator_scale.py", "first_step.py", "train_shakespeare.py"}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_benchmark_imports_and_explains_its_arguments(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def _load_train_shakespeare():
    """bench/ is no package: the benchmark's module, loaded from its file."""
    spec = importlib.util.spec_from_file_location("train_shakespeare", REPO / "bench" / "train_shakespeare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_train_shakespeare()
WINDOW_TOKENS = 100 * 12 * 64


@pytest.mark.parametrize(("records", "active", "rates"), [
    pytest.param([(100, 10.0), (200, 12.0), (300, 13.0)], [(0.0, 20.0)], [WINDOW_TOKENS / 2, WINDOW_TOKENS / 1],
                 id="a run resumed throughout: the whole window"),
    pytest.param([(100, 10.0), (200, 14.0)], [(9.0, 11.0), (13.0, 15.0)], [WINDOW_TOKENS / 2],
                 id="time frozen inside a window is left out"),
    pytest.param([(100, 10.0), (200, 14.0)], [(0.0, 5.0), (9.0, 11.0), (12.0, 12.5), (13.0, 15.0), (20.0, 30.0)],
                 [WINDOW_TOKENS / 2.5], id="slices before and after a window count for nothing"),
    pytest.param([(100, 10.0), (200, 11.0), (250, 11.5)], [(0.0, 20.0)], [WINDOW_TOKENS / 1, WINDOW_TOKENS / 2 / 0.5],
                 id="a shorter last window counts its own iterations"),
    pytest.param([(100, 10.0)], [(0.0, 20.0)], [], id="the first record only ends the warm-up"),
])
def test_window_rates_count_only_the_time_a_run_was_resumed(records, active, rates) -> None:
    assert bench.window_rates(records, active) == pytest.approx(rates)


# A parent sleeping with two sleeping children, one of them in a session of its own.
TREE = """
import subprocess, sys, time
sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
subprocess.Popen(sleep)
subprocess.Popen(sleep, start_new_session=True)
time.sleep(600)
"""


def _states(processes) -> set[str]:
    states = set()
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            states.add(process.status())
    return states


def _until(condition) -> bool:
    """Waits for a process state to show, not a time measured: generous, and polled."""
    deadline = time.monotonic() + 30
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_sliced_run_freezes_its_whole_tree_and_leaves_nothing_behind(tmp_path: Path) -> None:
    launch = bench.Launch("tree", [sys.executable, "-c", TREE], tmp_path / "out", lambda active: {})
    run = bench.SlicedRun(launch)
    try:
        assert _until(lambda: len(run.members()) == 3)
        tree = run.members()
        assert any(os.getpgid(p.pid) != run.pgid for p in tree), "the child in its own session is found"

        run.freeze()
        assert _states(tree) == {psutil.STATUS_STOPPED}
        assert not run.run_for(0.01)
        assert _states(tree) == {psutil.STATUS_STOPPED}
        assert len(run.active) == 1

        run.send(signal.SIGCONT)
        assert _until(lambda: psutil.STATUS_STOPPED not in _states(tree))
        run.freeze()
    finally:
        run.end()
    assert _until(lambda: _states(tree) <= {psutil.STATUS_ZOMBIE})
