"""The pods the operator creates really train: real operator (under the shipped RBAC), real
control plane, the test node agent as kubelet, real DeepSpeed over gloo on the CPU.

Every test trains the tiny GPT on a slice of tinyshakespeare that the test puts into a
data claim (mounted at /data); checkpoints and metrics.jsonl land in the checkpoint claim
the operator creates, which the agent keeps as a directory of this machine, so the tests
read the trainer's own record of what happened. The first test runs 2 pods x 2 ranks; the
others 2 pods x 1 rank, a gang all the same (suspend and deletion act on pods),
since each rank spends tens of seconds of a 2-core machine importing torch and DeepSpeed.

    .venv/bin/python -m pytest tests/e2e/test_operator_training.py
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from training_helpers import (
    FINISH_SECONDS,
    STEP_SECONDS,
    STOP_SECONDS,
    PodExits,
    Training,
    attempts,
    job_processes,
    of_kind,
    rank_process,
    start,
    wait_for,
)

from kubespeed import wiring
from kubespeed.checkpoints import LATEST_FILE, complete_tags, tag_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@contextlib.contextmanager
def held(training: Training, procs_per_node: int) -> Iterator[None]:
    """Every rank but global rank 0 stopped (SIGSTOP): the gang cannot take a step, while rank 0,
    waiting in a collective, still serves its metrics. So the operator reads one steady step."""
    peers = [rank_process(training.agent, training.name, node, local)
             for node in range(2) for local in range(procs_per_node) if (node, local) != (0, 0)]  # fmt: skip
    for peer in peers:
        peer.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for peer in peers:
            peer.send_signal(signal.SIGCONT)


def test_job_trains_to_success_reports_progress_and_names_its_last_checkpoint(training: Training) -> None:
    steps = 40
    start(training, steps=steps, checkpoint_interval=10, procs_per_node=2)

    def reported_step(after: int) -> int | None:
        status = training.jobs.status(training.name)
        step = (status.get("progress") or {}).get("step")
        return step if status.get("phase") == "Running" and step and step > after else None

    # The gang is held still at two points of the run, however fast it trains, so that the
    # status must show two different steps while it runs.
    seen = []
    for _ in range(2):
        training.wait_step((seen[-1] if seen else 0) + 3)
        with held(training, procs_per_node=2):
            seen.append(wait_for(lambda: reported_step(seen[-1] if seen else 0), "status.progress.step to move",
                                 STEP_SECONDS, explain=training.explain))  # fmt: skip
    status = training.wait_phase("Succeeded")
    assert seen[0] < seen[1] < steps, seen
    assert status["progress"]["step"] == steps and status["progress"]["totalSteps"] == steps

    assert status["checkpoint"]["step"] == steps
    named = status["checkpoint"]["path"]
    assert named in complete_tags(training.checkpoints)
    assert (training.checkpoints / LATEST_FILE).read_text().strip() == named == tag_for(steps)

    losses = [line["loss"] for line in of_kind(training.metrics(), "train")]
    assert len(losses) == steps
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, f"loss should fall: {losses}"
    runs = attempts(training.metrics())
    assert status.get("restarts", 0) == 0 and len(runs) == 1, f"{[run[0] for run in runs]}\n{training.explain()}"


def test_suspend_then_resume_continues_from_the_checkpoint_written_at_sigterm(training: Training) -> None:
    # No periodic checkpoint before the last step: the only one to resume from is SIGTERM's.
    steps = 100
    start(training, steps=steps, checkpoint_interval=1000)
    training.wait_step(3)
    training.jobs.patch_spec(training.name, {"runPolicy": {"suspend": True}})
    training.wait_phase("Suspended")
    wait_for(lambda: not training.jobs.pods(training.name) and not job_processes(training.name),
               "the suspended job's pods and processes to be gone", STOP_SECONDS, explain=training.explain)  # fmt: skip
    saved = of_kind(training.metrics(), "checkpoint")
    assert len(saved) == 1 and saved[0]["step"] == of_kind(training.metrics(), "train")[-1]["step"] >= 3, saved
    assert (training.checkpoints / LATEST_FILE).read_text().strip() == tag_for(saved[0]["step"])

    training.jobs.patch_spec(training.name, {"runPolicy": {"suspend": False}})
    training.wait_phase("Succeeded")
    second = attempts(training.metrics())[1]
    assert of_kind(second, "resume")[0]["step"] == saved[0]["step"]
    assert of_kind(second, "train")[0]["step"] == saved[0]["step"] + 1
    assert of_kind(second, "train")[-1]["step"] == steps


def test_operator_restart_mid_training_leaves_training_alone_and_status_keeps_updating(training: Training) -> None:
    steps = 200
    start(training, steps=steps, checkpoint_interval=50)
    reported = wait_for(lambda: (training.jobs.status(training.name).get("progress") or {}).get("step"),
                          "status.progress.step", STEP_SECONDS, explain=training.explain)  # fmt: skip
    pods = {pod.metadata.name: pod.metadata.uid for pod in training.jobs.pods(training.name)}
    training.operator.kill()
    try:
        # Training goes on with nobody watching.
        training.wait_step(training.last_step() + 3)
    finally:
        training.operator.start()
    wait_for(lambda: ((training.jobs.status(training.name).get("progress") or {}).get("step") or 0) > reported + 3,
               "status.progress to move after the restart", STEP_SECONDS, explain=training.explain)  # fmt: skip
    status = training.wait_phase("Succeeded")
    assert {pod.metadata.name: pod.metadata.uid for pod in training.jobs.pods(training.name)} == pods
    assert status.get("restarts", 0) == 0 and status["attempt"] == 1
    assert len(attempts(training.metrics())) == 1
    assert of_kind(training.metrics(), "train")[-1]["step"] == steps


# oneDNN honours this cap on the instruction sets it uses: below AVX512-FP16 a CPU has no
# native fp16 (as an AMD EPYC), and DeepSpeed's CPU accelerator refuses fp16.
WITHOUT_NATIVE_FP16 = {"name": "ONEDNN_MAX_CPU_ISA", "value": "AVX512_CORE_BF16"}
# (case, spec changes, the condition's reason, what the failing rank said, quoted on the job)
FAILURES = [
    ("a missing data file", {"data__train": f"{wiring.DATA_DIR}/nonexistent.txt"}, "DataError",
     f"spec.data: data source {wiring.DATA_DIR}/nonexistent.txt does not exist"),
    ("fp16 on a CPU without it", {"deepspeed__precision": "fp16", "env": [WITHOUT_NATIVE_FP16]}, "ConfigError",
     "spec.deepspeed.precision: fp16 is not supported on this device (cpu)"),
]


@pytest.mark.parametrize(("case", "changes", "reason", "said"), FAILURES, ids=[f[0].replace(" ", "-") for f in FAILURES])
def test_why_a_job_failed_reaches_its_condition_and_event_in_the_failing_ranks_words(
    training: Training, case: str, changes: dict[str, Any], reason: str, said: str
) -> None:
    start(training, steps=10, checkpoint_interval=10, **changes)
    status = training.wait_phase("Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == reason, case
    assert said in failed["message"] and said in status["message"], failed["message"]
    assert status["attempt"] == 1 and status.get("restarts", 0) == 0
    wait_for(lambda: any(r == reason and said in m for _, r, m in training.jobs.events(training.name)),
             f"a {reason} Event quoting the rank", STOP_SECONDS, explain=training.explain)  # fmt: skip
    # The pods used the termination log (the launcher's own line), not the fallback to their logs.
    terminated = [p.status.container_statuses[0].state.terminated for p in training.jobs.pods(training.name)]
    assert any(t is not None and t.message.startswith("rank ") and said in t.message for t in terminated), terminated


def test_deleting_the_job_stops_every_process_within_the_grace_period(training: Training) -> None:
    start(training, steps=100_000, checkpoint_interval=100_000, grace_seconds=60)
    training.wait_step(3)
    with PodExits(training.jobs.core, training.jobs.namespace, training.name) as exits:
        training.jobs.custom.delete_namespaced_custom_object(*training.jobs.group, training.jobs.namespace,
                                                             training.jobs.plural, training.name)  # fmt: skip
        wait_for(lambda: not training.jobs.pods(training.name), "the job's pods to be gone", STOP_SECONDS,
                   explain=training.explain)  # fmt: skip
    assert job_processes(training.name) == []
    assert training.agent.pids() == []
    # Each launcher exited by itself with the preempted code (143) after its ranks wrote the
    # SIGTERM checkpoint: had one outlived the grace period, the agent's SIGKILL would show as 137.
    pods = [wiring.pod_name(training.name, rank) for rank in range(2)]
    assert {exits.exits.get((pod, "1")) for pod in pods} == {wiring.EXIT_PREEMPTED.code}, exits.exits
    saved = of_kind(training.metrics(), "checkpoint")
    assert len(saved) == 1 and saved[0]["step"] >= 3
