"""`kubespeed local` end to end: the quickstart example really trains under the operator's
pod wiring, reports, survives Ctrl-C with a checkpoint, resumes, and leaves no process behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from training_helpers import local_rank_of, processes_of

from kubespeed import wiring

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "manifests" / "examples" / "quickstart.yaml"
# Few steps, frequent logs and evals: the behaviour of a full run, in CI time (uncompiled: a
# few steps do not repay compiling).
SHORT = ["--set", "training.logInterval=2", "--set", "training.evalInterval=10", "--set", "training.evalBatches=2",
         "--set", "training.schedule.warmupSteps=2", "--set", "checkpoint.interval=10", "--set", "deepspeed.compile=false"]


def local(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kubespeed_cli", "local", str(QUICKSTART), "--run-dir", str(run_dir), "--no-progress", *SHORT, *args]


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "quickstart" / "checkpoints" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@contextmanager
def running(run_dir: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`kubespeed local` in the background; killed if a test fails before it ends."""
    proc = subprocess.Popen(local(run_dir, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_until(proc: subprocess.Popen, done: Callable[[], bool], failure: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert proc.poll() is None and time.monotonic() < deadline, failure
        time.sleep(0.5)


def test_quickstart_trains_reports_and_leaves_nothing_running(run_dir):
    done = subprocess.run(local(run_dir, "--set", "training.steps=20"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((run_dir / "quickstart" / "summary.json").read_text())
    assert summary["outcome"] == "succeeded" and summary["step"] == 20
    assert summary["final_loss"] < summary["first_loss"], "the loss falls"
    assert summary["eval_loss"] is not None and summary["seconds_to_first_step"] > 0 and summary["steps_per_second"] > 0
    startup = summary["startup_seconds"]
    assert list(startup) == ["launch", "imports", "processGroup", "data", "engine", "firstStep"]
    assert all(seconds >= 0 for seconds in startup.values())
    assert sum(startup.values()) == pytest.approx(summary["seconds_to_first_step"], abs=0.05)
    assert Path(summary["loss_plot"]).read_bytes()[:4] == b"\x89PNG"
    assert Path(summary["checkpoint"]).exists() and Path(summary["export"]).exists()
    assert summary["sample_command"] in done.stdout
    assert (run_dir / "quickstart" / "logs" / "quickstart-0.log").exists()
    assert processes_of(run_dir) == []


def test_ctrl_c_checkpoints_and_a_rerun_resumes(run_dir):
    with running(run_dir, "--set", "training.steps=2000") as proc:
        wait_until(proc, lambda: any(r.get("step", 0) >= 6 for r in metrics(run_dir)), "training never reached step 6")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert f"resume with: kubespeed local {QUICKSTART}" in out
    assert processes_of(run_dir) == []
    stopped = json.loads((run_dir / "quickstart" / "summary.json").read_text())
    assert stopped["outcome"] == "interrupted" and stopped["checkpoint"], stopped

    logged_before = len(metrics(run_dir))
    target = stopped["step"] + 4
    done = subprocess.run(local(run_dir, "--set", f"training.steps={target}"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = [r["step"] for r in metrics(run_dir)[logged_before:] if "loss" in r]
    assert resumed and min(resumed) > stopped["step"], f"resumed run logged steps {resumed} after stopping at {stopped['step']}"
    assert json.loads((run_dir / "quickstart" / "summary.json").read_text())["step"] == target


def test_a_rerun_with_more_nodes_resumes_at_the_new_size_from_a_converted_checkpoint(run_dir):
    # Micro batches of 4: the global batch of 16 divides over 2 ranks (1 node) and over 4 (2 nodes, which share
    # their checkpoints through a claim).
    same = ["--set", "training.microBatchSize=4", "--set", "checkpoint.volumeClaim.size=1Gi"]
    first = subprocess.run(local(run_dir, *same, "--set", "training.steps=4"), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    done = subprocess.run(local(run_dir, *same, "--set", "training.steps=8", "--set", "nodes=2"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = metrics(run_dir)
    (resume,) = [r for r in lines if r["kind"] == "resume"]
    assert (resume["step"], resume["dataParallelSize"], resume["resizedFrom"]) == (4, 4, 2)
    assert [(r["worldSize"], r["gradientAccumulation"]) for r in lines if r["kind"] == "start"] == [(2, 2), (4, 1)]
    trained = {r["step"]: r["samplesDrawn"] for r in lines if r["kind"] == "train"}
    assert trained == {step: 16 * step for step in (2, 4, 6, 8)}
    assert processes_of(run_dir) == []


def test_a_failure_no_retry_can_help_is_not_retried(run_dir, tmp_path):
    missing = tmp_path / "no-such-corpus.txt"
    done = subprocess.run(local(run_dir, "--set", f"data.train={missing}"), capture_output=True, text=True, timeout=600)
    assert done.returncode == wiring.EXIT_DATA_ERROR.code, done.stdout + done.stderr
    assert "a retry cannot help" in done.stderr
    assert str(missing) in (run_dir / "quickstart" / "logs" / "quickstart-0.log").read_text()
    summary = json.loads((run_dir / "quickstart" / "summary.json").read_text())
    assert (summary["outcome"], summary["restarts"]) == (f"failed: quickstart-0 exited {wiring.EXIT_DATA_ERROR.code}", 0)
    # The failing rank's own words, from its termination log, name the file; no empty loss lines.
    said = f"spec.data: data source {missing} does not exist"
    assert summary["reason"] == f"rank 0: {said}"
    assert f"  reason          rank 0: {said}" in done.stdout and "loss" not in done.stdout, done.stdout
    assert processes_of(run_dir) == []


def launchers(run_dir: Path) -> set[int]:
    return {p.pid for p in processes_of(run_dir) if "launch" in p.cmdline()}


def rank(run_dir: Path, local_rank: str) -> psutil.Process:
    [found] = [p for p in processes_of(run_dir) if local_rank_of(p) == int(local_rank)]
    return found


def test_a_killed_rank_is_restarted_in_place_by_its_launcher(run_dir):
    with running(run_dir, "--set", "training.steps=2000", "--set", "checkpoint.interval=4") as proc:
        wait_until(proc, lambda: any(r.get("kind") == "checkpoint" for r in metrics(run_dir)), "no checkpoint was written")
        pods = launchers(run_dir)
        rank(run_dir, "1").kill()
        wait_until(proc, lambda: any(r.get("kind") == "resume" for r in metrics(run_dir)), "the ranks never resumed")
        assert launchers(run_dir) == pods, "the pod's launcher lives on"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
    assert "the ranks were restarted in place (1 in this attempt)" in out, out
    assert "restarting the gang" not in out
    [resume] = [r for r in metrics(run_dir) if r.get("kind") == "resume"]
    assert resume["step"] >= 4
    summary = json.loads((run_dir / "quickstart" / "summary.json").read_text())
    assert (summary["restarts"], summary["in_place_restarts"]) == (0, 1)


def test_without_in_place_restarts_a_killed_rank_restarts_the_gang_which_resumes(run_dir):
    with running(run_dir, "--set", "training.steps=2000", "--set", "checkpoint.interval=4",
                 "--set", "runPolicy.maxInPlaceRestarts=0") as proc:  # fmt: skip
        wait_until(proc, lambda: any(r.get("kind") == "checkpoint" for r in metrics(run_dir)), "no checkpoint was written")
        rank(run_dir, "1").kill()
        wait_until(proc, lambda: any(r.get("kind") == "resume" for r in metrics(run_dir)), "the gang never resumed")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
    assert "restarting the gang as attempt 2" in out, out
    [resume] = [r for r in metrics(run_dir) if r.get("kind") == "resume"]
    assert resume["step"] >= 4
    assert "attempt 2" in (run_dir / "quickstart" / "logs" / "quickstart-0.log").read_text()
    assert json.loads((run_dir / "quickstart" / "summary.json").read_text())["restarts"] == 1


def test_a_frozen_rank_is_reported_and_its_watchdog_restarts_the_ranks_in_place(run_dir):
    deadline = 20
    with running(run_dir, "--set", "training.steps=2000", "--set", "checkpoint.interval=4",
                 "--set", f"runPolicy.progressDeadlineSeconds={deadline}") as proc:  # fmt: skip
        wait_until(proc, lambda: any(r.get("kind") == "checkpoint" for r in metrics(run_dir)), "no checkpoint was written")
        rank(run_dir, "1").suspend()
        wait_until(proc, lambda: any(r.get("kind") == "resume" for r in metrics(run_dir)), "the ranks never resumed")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
    assert f"(runPolicy.progressDeadlineSeconds is {deadline}s)" in out and "stalled: step" in out, out
    assert "the ranks were restarted in place (1 in this attempt)" in out
    assert json.loads((run_dir / "quickstart" / "summary.json").read_text())["restarts"] == 0


def test_ranks_that_outlive_the_grace_period_die_with_their_launcher(run_dir):
    # A frozen rank cannot stop; after the grace period the pod is killed, and no rank may outlive it.
    with running(run_dir, "--set", "training.steps=2000", "--set", "runPolicy.terminationGracePeriodSeconds=3") as proc:
        wait_until(proc, lambda: any(r.get("kind") == "train" for r in metrics(run_dir)), "training never started")
        rank(run_dir, "1").suspend()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert processes_of(run_dir) == []
