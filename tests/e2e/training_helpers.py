"""What the e2e tests of training jobs build on: the operator in the pods' network, a small
Shakespeare job, its metrics file, its processes, and the exit codes of its pods.

Pod addresses exist only in the node agent's network namespace (agent/netns.py), and the
operator reads rank 0's metrics at the pod's address, so the operator under test runs
there: the same `kubespeed operator` process, RBAC and token as in tests/integration,
started through `nsenter`.
"""

from __future__ import annotations

import re
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from kubespeed import wiring
from kubespeed.checkpoints import METRICS_FILE
from kubespeed.metrics import read_jsonl

# The operator fixture module of tests/integration (its own conftest puts it on sys.path
# there); the e2e tests run the same operator, so they import it rather than copy it. And
# tests/ itself, for spec_overrides: the benchmarks in bench/ import this module outside pytest.
TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "integration"), str(TESTS)]

from operator_fixture import JobClient, OperatorProcess, wait_for  # noqa: E402
from spec_overrides import overridden  # noqa: E402

# Generous bounds for waiting: a 4-rank attempt needs tens of seconds to import torch and
# DeepSpeed on a 2-core machine before its first step.
FINISH_SECONDS = 300
STEP_SECONDS = 180
STOP_SECONDS = 90

DATA_CLAIM = "shakespeare"
DATA_FILE = "tinyshakespeare.txt"
# 40k characters: enough text that a tiny GPT's loss falls in a few dozen steps, and
# small enough that preparing it is instant.
DATA_CHARS = 40_000
# elastic.process_name's shape.
RANK_NAME = re.compile(r"rank(\d+)-local(\d+)")


class NodeNetworkOperator(OperatorProcess):
    """The operator process, run inside the node agent's network namespace."""

    def __init__(self, network: Any, kubeconfig: Path, folder: Path, identity: str) -> None:
        super().__init__(kubeconfig, folder, identity=identity)
        self.network = network

    def args(self) -> list[str]:
        return self.network.command(super().args())


def shakespeare_job(name: str, image: str, *, steps: int, checkpoint_interval: int, procs_per_node: int,
                    grace_seconds: int = 60, run_policy: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """2 pods x `procs_per_node` ranks of the tiny GPT on the Shakespeare slice in the data claim, on the fake GPU nodes.

    `gpu: false` with the GPU taint tolerated: the pods land on the fake GPU nodes, whose
    agent has no GPU, and the trainer runs DeepSpeed on the CPU over gloo.
    """
    spec: dict[str, Any] = {
        "image": image,
        "nodes": 2,
        "procsPerNode": procs_per_node,
        "gpu": False,
        "scheduling": {"tolerations": [{"key": wiring.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]},
        "model": {"type": "gpt", "size": "tiny"},
        "data": {"train": f"{wiring.DATA_DIR}/{DATA_FILE}", "claimName": DATA_CLAIM, "tokenizer": {"type": "char"}},
        "training": {"steps": steps, "globalBatchSize": 8, "microBatchSize": 2, "seqLength": 32, "logInterval": 1,
                     "evalInterval": 0, "evalBatches": 2, "seed": 7,
                     "optimizer": {"lr": 3e-3}, "schedule": {"warmupSteps": 2, "minLr": 3e-4}},  # fmt: skip
        "deepspeed": {"zeroStage": 1, "precision": "fp32"},
        "checkpoint": {"volumeClaim": {"size": "1Gi"}, "interval": checkpoint_interval, "keep": 2, "exportWeights": False},
        "runPolicy": {"backoffLimit": 2, "terminationGracePeriodSeconds": grace_seconds, **(run_policy or {})},
    }
    return {"apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}", "kind": wiring.KIND, "metadata": {"name": name}, "spec": spec}


def claim_volume(core: Any, agent: Any, namespace: str, claim: str, access_mode: str) -> str:
    """A PersistentVolume bound ahead to `claim` (created now or later), as a cluster's provisioner
    would make one: the scheduler places no pod whose claim is unbound. The agent keeps the
    claim's files in its own directory, which the volume names. Returns the volume's name."""
    name = f"pv-{secrets.token_hex(6)}"
    core.create_persistent_volume({
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": [access_mode],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": claim},
            "hostPath": {"path": str(agent.claim_dir(namespace, claim))},
        },
    })  # fmt: skip
    return name


def fill_data_claim(core: Any, agent: Any, namespace: str, shakespeare: Path) -> None:
    """The claim the job reads its text from, holding the first DATA_CHARS of tinyshakespeare."""
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": DATA_CLAIM},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}},
    })  # fmt: skip
    directory = agent.claim_dir(namespace, DATA_CLAIM)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    text = shakespeare.read_text(encoding="utf-8")[:DATA_CHARS]
    (directory / DATA_FILE).write_text(text, encoding="utf-8")
    (directory / DATA_FILE).chmod(0o644)


def attempts(lines: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """metrics.jsonl cut into runs: each run of the trainer begins with a `start` line."""
    runs: list[list[dict[str, Any]]] = []
    for line in lines:
        if line["kind"] == "start" or not runs:
            runs.append([])
        runs[-1].append(line)
    return runs


def of_kind(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["kind"] == kind]


def job_processes(job: str) -> list[psutil.Process]:
    """Every live process on this machine started for `job`'s pods (launchers and ranks), found by
    the pod env the operator sets, wherever the process tree put them."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(wiring.ENV_JOB_NAME) == job:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def local_rank_of(process: psutil.Process) -> int | None:
    """The local rank of a trainer rank, from the name it gives its process (kubespeed_trainer.elastic);
    None for any other process. (Ranks are forked from their launcher's forkserver: their command
    line and environment are the forkserver's.)"""
    try:
        named = RANK_NAME.fullmatch(process.name())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return int(named.group(2)) if named else None


def rank_process(agent: Any, job: str, node_rank: int, local_rank: int) -> psutil.Process:
    """The trainer rank `local_rank` of pod `node_rank`, among the processes the agent started for its pods."""
    for root in agent.pids():
        try:
            tree = psutil.Process(root).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            try:
                env = process.environ()
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            if (env.get(wiring.ENV_JOB_NAME) == job and env.get(wiring.ENV_NODE_RANK) == str(node_rank)
                    and local_rank_of(process) == local_rank):  # fmt: skip
                return process
    raise LookupError(f"no rank {local_rank} process of {job} node rank {node_rank} among the agent's pods")


def kill_processes(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes, timeout=10)


class PodExits:
    """Watches a job's pods and keeps each container exit the kubelet (the agent) reports:
    {(pod name, attempt label): exit code}. A pod's last status travels with its DELETED
    event, so exits of pods that are gone at once are seen too."""

    def __init__(self, core: Any, namespace: str, job: str) -> None:
        self.core = core
        self.namespace = namespace
        self.selector = f"{wiring.JOB_LABEL}={job}"
        self.exits: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"pod-exits-{job}", daemon=True)

    def __enter__(self) -> PodExits:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        from kubernetes import watch

        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listing = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
                    for pod in listing.items:
                        self._record(pod)
                    version = listing.metadata.resource_version
                stream = watch.Watch().stream(self.core.list_namespaced_pod, self.namespace, label_selector=self.selector,
                                              resource_version=version, timeout_seconds=2)  # fmt: skip
                for event in stream:
                    version = event["object"].metadata.resource_version
                    self._record(event["object"])
                    if self._stop.is_set():
                        break
            except Exception:  # a 410 or a dropped connection: list again
                version = ""
                self._stop.wait(0.2)

    def _record(self, pod: Any) -> None:
        for status in (pod.status and pod.status.container_statuses) or []:
            terminated = status.state and status.state.terminated
            if terminated is not None:
                self.exits[(pod.metadata.name, pod.metadata.labels.get(wiring.ATTEMPT_LABEL, ""))] = terminated.exit_code


class Training:
    """One test's job: its client, its files on this machine, and what went wrong if it fails."""

    def __init__(self, jobs: JobClient, agent: Any, operator: NodeNetworkOperator, name: str) -> None:
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


def start(training: Training, *, steps: int, checkpoint_interval: int, procs_per_node: int = 1, grace_seconds: int = 60,
          run_policy: dict[str, Any] | None = None, **changes: Any) -> None:  # fmt: skip
    """Create the job; `changes` change its spec as spec_overrides does (`data__train="..."`)."""
    # The trainer image: the one the agent maps to this machine's kubespeed installation.
    image = next(iter(training.agent.images))
    manifest = shakespeare_job(training.name, image, steps=steps, checkpoint_interval=checkpoint_interval,
                               procs_per_node=procs_per_node, grace_seconds=grace_seconds, run_policy=run_policy)  # fmt: skip
    manifest["spec"] = overridden(manifest["spec"], **changes)
    training.jobs.create(manifest)


def processes_of(run_dir: Path) -> list[psutil.Process]:
    """Every live process whose pod env points into this run folder."""
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if env.get(wiring.ENV_CHECKPOINT_DIR, "").startswith(str(run_dir)):
            found.append(proc)
    return found
