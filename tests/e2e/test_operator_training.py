"""The pods the operator creates really train: real operator (under the shipped RBAC), real
control plane, the test node agent as kubelet, real DeepSpeed over gloo on the CPU.

Every test trains the tiny GPT on a slice of tinyshakespeare that the test puts into a
data claim (mounted at /data); checkpoints and metrics.jsonl land in the checkpoint claim
the operator creates, which the agent keeps as a directory of this machine, so the tests
read the trainer's own record of what happened. The first test runs 2 pods x 2 ranks; the
others 2 pods x 1 rank, a gang all the same (restart, suspend and deletion act on pods),
since each rank spends tens of seconds of a 2-core machine importing torch and DeepSpeed.

    .venv/bin/python -m pytest tests/e2e/test_operator_training.py
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent import NodeAgent
from kubernetes import client
from training_helpers import (
    DATA_CLAIM,
    NodeNetworkOperator,
    PodExits,
    attempts,
    claim_volume,
    fill_data_claim,
    job_processes,
    kill_processes,
    of_kind,
    rank_process,
    shakespeare_job,
    wait_for,
)

from kubespeed import wiring
from kubespeed_cli.dev.cluster import ControlPlane
from kubespeed.checkpoints import LATEST_FILE, METRICS_FILE, complete_tags, tag_for
from kubespeed.metrics import read_jsonl
from operator_fixture import JobClient, install_crd, install_operator_rbac, operator_kubeconfig
from spec_overrides import overridden

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Generous bounds for waiting: a 4-rank attempt needs tens of seconds to import torch and
# DeepSpeed on a 2-core machine before its first step.
FINISH_SECONDS = 300
STEP_SECONDS = 180
STOP_SECONDS = 90


@pytest.fixture(scope="module")
def training_operator(control_plane: ControlPlane, node_agent: NodeAgent) -> Iterator[NodeNetworkOperator]:
    """One operator for this module, in the pods' network so it can read rank 0's metrics.
    It holds the leader Lease while it runs and releases it when stopped."""
    api = control_plane.api_client()
    install_crd(api)
    install_operator_rbac(control_plane)
    with tempfile.TemporaryDirectory(prefix="kubespeed-e2e-operator-") as folder:
        kubeconfig = operator_kubeconfig(control_plane, Path(folder))
        process = NodeNetworkOperator(node_agent.network, kubeconfig, Path(folder), identity="e2e-operator")
        try:
            # Inside the try: an operator that never took the Lease is stopped too.
            process.start()
            yield process
        finally:
            process.stop()


class Training:
    """One test's job: its client, its files on this machine, and what went wrong if it fails."""

    def __init__(self, jobs: JobClient, agent: NodeAgent, operator: NodeNetworkOperator, name: str) -> None:
        self.jobs = jobs
        self.agent = agent
        self.operator = operator
        self.name = name

    @property
    def checkpoints(self) -> Path:
        return self.agent.claim_dir(self.jobs.namespace, wiring.checkpoint_claim_name(self.name))

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.checkpoints / METRICS_FILE)

    def last_step(self) -> int:
        trained = of_kind(self.metrics(), "train")
        return trained[-1]["step"] if trained else 0

    def wait_step(self, step: int, timeout: float = STEP_SECONDS) -> int:
        """Wait until the trainer has logged `step` (or later); returns the step seen."""
        return wait_for(lambda: self.last_step() >= step and self.last_step(), f"{self.name} to train step {step}",
                          timeout, explain=self.explain)  # fmt: skip

    def wait_phase(self, phase: str, timeout: float = FINISH_SECONDS) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.jobs.status(self.name)
            return status if status.get("phase") == phase else None

        return wait_for(check, f"{self.name} to be {phase}", timeout, interval=0.5, explain=self.explain)

    def explain(self) -> str:
        """The job's status and events, the pods' logs and the operator's log tail."""
        parts = [f"status: {self.jobs.status(self.name)}", f"events: {self.jobs.events(self.name)}"]
        for rank in range(2):
            pod = wiring.pod_name(self.name, rank)
            parts.append(f"----- logs of {pod}\n{self.agent.logs(self.jobs.namespace, pod)[-3000:]}")
        parts.append(f"----- metrics.jsonl (last lines)\n{self.metrics()[-5:]}")
        parts.append(f"----- operator log\n{self.operator.log()[-3000:]}")
        return "\n".join(parts)


@pytest.fixture
def training(control_plane: ControlPlane, namespace: str, node_agent: NodeAgent, training_operator: NodeNetworkOperator,
             shakespeare_path: Path, request: pytest.FixtureRequest) -> Iterator[Training]:  # fmt: skip
    """The claims bound and the data claim filled; on teardown the job is deleted and every
    process of its pods is gone (the stragglers killed), whether the test passed or not, and
    the operator logged no traceback and no request the shipped RBAC refused."""
    jobs = JobClient(control_plane, namespace)
    name = request.node.originalname.removeprefix("test_").replace("_", "-")[:40].strip("-")
    volumes = [claim_volume(jobs.core, node_agent, namespace, DATA_CLAIM, "ReadOnlyMany"),
               claim_volume(jobs.core, node_agent, namespace, wiring.checkpoint_claim_name(name), "ReadWriteMany")]  # fmt: skip
    fill_data_claim(jobs.core, node_agent, namespace, shakespeare_path)
    run = Training(jobs, node_agent, training_operator, name)
    try:
        yield run
    finally:
        try:
            if jobs.get(name) is not None:
                jobs.custom.delete_namespaced_custom_object(*jobs.group, namespace, jobs.plural, name)
            jobs.core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
            wait_for(lambda: not job_processes(name), f"the processes of {name} to end", STOP_SECONDS)
        finally:
            kill_processes(job_processes(name))
            for volume in volumes:
                jobs.core.delete_persistent_volume(volume)
    if training_operator.process is not None and training_operator.process.poll() is None:
        training_operator.assert_clean_log()


def start(training: Training, *, steps: int, checkpoint_interval: int, procs_per_node: int = 1, grace_seconds: int = 60,
          **changes: Any) -> None:  # fmt: skip
    """Create the job; `changes` change its spec as spec_overrides does (`data__train="..."`)."""
    # The trainer image: the one the agent maps to this machine's kubespeed installation.
    image = next(iter(training.agent.images))
    manifest = shakespeare_job(training.name, image, steps=steps, checkpoint_interval=checkpoint_interval,
                               procs_per_node=procs_per_node, grace_seconds=grace_seconds)  # fmt: skip
    manifest["spec"] = overridden(manifest["spec"], **changes)
    training.jobs.create(manifest)


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
    assert status.get("restarts", 0) == 0 and len(attempts(training.metrics())) == 1


def test_killed_rank_restarts_the_gang_and_attempt_two_resumes_from_the_checkpoint(training: Training) -> None:
    steps = 100
    start(training, steps=steps, checkpoint_interval=5)
    wait_for(lambda: of_kind(training.metrics(), "checkpoint"), "a first checkpoint", STEP_SECONDS, explain=training.explain)
    with PodExits(training.jobs.core, training.jobs.namespace, training.name) as exits:
        victim = rank_process(training.agent, training.name, node_rank=1, local_rank=0)
        victim.send_signal(signal.SIGKILL)
        status = training.wait_phase("Succeeded")
    assert exits.exits[(wiring.pod_name(training.name, 1), "1")] == wiring.EXIT_RETRYABLE.code, exits.exits
    assert status["restarts"] == 1 and status["attempt"] == 2

    first, second = attempts(training.metrics())
    saved_before = of_kind(first, "checkpoint")[-1]["step"]
    resumed = of_kind(second, "resume")
    assert resumed and resumed[0]["step"] == saved_before > 0, second[:3]
    assert of_kind(second, "train")[0]["step"] == saved_before + 1
    assert of_kind(second, "train")[-1]["step"] == steps


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
