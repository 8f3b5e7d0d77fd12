"""A user's own DeepSpeed program in a user's image, run by the operator: real control plane, the test
node agent as kubelet, real DeepSpeed over gloo on the CPU, and nothing of kubespeed in the image.

The program (programs/deepspeed_tutorial.py) is written as DeepSpeed's getting-started tutorial
writes one. The "user image" is a Python environment with torch and DeepSpeed where `import
kubespeed` fails (agent/images.py); the program host comes into each pod from the trainer image
through the init container, as on a cluster. The program's rank 0 records every step in
`steps.jsonl` in the checkpoint claim, which the tests read.

    .venv/bin/python -m pytest tests/e2e/test_program_training.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import pytest
from agent.images import user_environment, user_image
from training_helpers import STEP_SECONDS, STOP_SECONDS, PodExits, Training, job_processes, wait_for

from kubespeed import wiring

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

USER_IMAGE = "registry.example/team/deepspeed-tutorial:1"
PROGRAM = Path(__file__).with_name("programs") / "deepspeed_tutorial.py"
# DeepSpeed's config as such a program ships it; torch's Adam, since DeepSpeed's CPU Adam is a C++ op built at start-up.
DEEPSPEED_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "optimizer": {"type": "Adam", "params": {"lr": 0.01, "torch_adam": True}},
}


@pytest.fixture(scope="module")
def user_program_image(node_agent: Any) -> Iterator[str]:
    """The user's image, known to the agent for this module. DeepSpeed's CPU collectives build a C++ op
    (deepspeed_shm_comm) at start-up; as an image would, this one carries it built, in a folder kept
    between sessions for these versions of torch and DeepSpeed."""
    versions = f"torch{metadata.version('torch')}-deepspeed{metadata.version('deepspeed')}"
    root = Path(tempfile.gettempdir()) / f"kubespeed-e2e-user-image-{versions}"
    bin_dir = user_environment(root / "env")
    app = root / "app"
    app.mkdir(exist_ok=True)
    shutil.copy(PROGRAM, app / PROGRAM.name)
    # Not under /tmp: the pods' own /tmp hides it and the agent binds it back read-only, and torch takes
    # a lock file in the op's folder each time a rank loads the op.
    extensions = Path("/var/tmp") / f"kubespeed-e2e-torch-extensions-{versions}"
    if not (extensions / "built").exists():
        extensions.mkdir(parents=True, exist_ok=True)
        build = "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
        subprocess.run([str(bin_dir / "python3"), "-c", build], check=True, cwd=app,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin", "TORCH_EXTENSIONS_DIR": str(extensions), "HOME": str(root)})  # fmt: skip
        (extensions / "built").touch()
    # The pods' user takes that lock.
    for path in [extensions, *extensions.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o777 if path.is_dir() else 0o666))
    bare = subprocess.run([str(bin_dir / "python3"), "-c", "import kubespeed"], cwd=app, capture_output=True)
    assert bare.returncode != 0, "the user's image must not have kubespeed"
    node_agent.images[USER_IMAGE] = user_image(bin_dir, app, {"TORCH_EXTENSIONS_DIR": str(extensions)}, [str(extensions)])
    try:
        yield USER_IMAGE
    finally:
        del node_agent.images[USER_IMAGE]


def program_job(name: str, image: str, *, launcher: str, procs_per_node: int, steps: int, save_interval: int,
                step_seconds: float = 0.0, grace_seconds: int = 60) -> dict[str, Any]:  # fmt: skip
    spec = {
        "image": image,
        "nodes": 2,
        "procsPerNode": procs_per_node,
        "gpu": False,
        "scheduling": {"tolerations": [{"key": wiring.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]},
        "program": {
            "launcher": launcher,
            "command": [PROGRAM.name, "--steps", str(steps), "--save-interval", str(save_interval), "--step-seconds", str(step_seconds)],
            "deepspeedConfig": DEEPSPEED_CONFIG,
        },
        "checkpoint": {"volumeClaim": {"size": "1Gi"}},
        "runPolicy": {"backoffLimit": 2, "terminationGracePeriodSeconds": grace_seconds},
    }
    return {"apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}", "kind": wiring.KIND, "metadata": {"name": name}, "spec": spec}


def steps(training: Training) -> list[dict[str, Any]]:
    path = training.checkpoints / "steps.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_step(training: Training, step: int, attempt: int = 1) -> int:
    def seen() -> int | None:
        done = [s["step"] for s in steps(training) if s["attempt"] == str(attempt)]
        return max(done) if done and max(done) >= step else None

    return wait_for(seen, f"{training.name} to run step {step} in attempt {attempt}", STEP_SECONDS, explain=training.explain)


def latest(training: Training) -> str:
    return (training.checkpoints / "latest").read_text().strip()


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_a_users_program_trains_on_two_pods_of_two_ranks_and_reports_progress(training: Training, user_program_image: str, launcher: str) -> None:
    total = 30
    training.jobs.create(program_job(training.name, user_program_image, launcher=launcher, procs_per_node=2, steps=total,
                                     save_interval=10, step_seconds=0.3))  # fmt: skip

    def reported() -> dict[str, Any] | None:
        progress = training.jobs.status(training.name).get("progress") or {}
        return progress if progress.get("step") and progress.get("loss") else None

    progress = wait_for(reported, "status.progress with a step and a loss", STEP_SECONDS, explain=training.explain)
    assert 1 <= progress["step"] <= total and progress["totalSteps"] == total, progress
    training.wait_phase("Succeeded")
    record = steps(training)
    assert [s["step"] for s in record] == list(range(1, total + 1))
    assert not any(s["kubespeedImportable"] for s in record)
    assert latest(training) == f"global_step{total}"
    # DeepSpeed's own checkpoint layout, as the program saved it.
    assert (training.checkpoints / f"global_step{total}" / "mp_rank_00_model_states.pt").is_file()


def rank(training: Training, node_rank: int, local_rank: int) -> psutil.Process:
    for process in job_processes(training.name):
        try:
            env, cmdline = process.environ(), process.cmdline()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if (env.get(wiring.ENV_NODE_RANK) == str(node_rank) and env.get("LOCAL_RANK") == str(local_rank)
                and any(arg.endswith(PROGRAM.name) for arg in cmdline)):  # fmt: skip
            return process
    raise LookupError(f"no rank {local_rank} of pod {node_rank}")


def test_a_killed_rank_restarts_the_gang_and_the_program_resumes_from_latest(training: Training, user_program_image: str) -> None:
    total = 40
    training.jobs.create(program_job(training.name, user_program_image, launcher="deepspeed", procs_per_node=1, steps=total,
                                     save_interval=5, step_seconds=0.3))  # fmt: skip
    wait_step(training, 7)
    rank(training, node_rank=1, local_rank=0).send_signal(signal.SIGKILL)
    wait_step(training, 1, attempt=2)
    status = training.wait_phase("Succeeded")
    assert status["restarts"] == 1 and status["attempt"] == 2, status
    first, second = [s for s in steps(training) if s["attempt"] == "1"], [s for s in steps(training) if s["attempt"] == "2"]
    resumed = second[0]["resumedFrom"]
    assert resumed % 5 == 0 and 5 <= resumed <= first[-1]["step"], (resumed, first[-1])
    assert second[0]["step"] == resumed + 1 and second[-1]["step"] == total


def test_deleting_the_job_stops_every_rank_which_saves_within_the_grace_period(training: Training, user_program_image: str) -> None:
    training.jobs.create(program_job(training.name, user_program_image, launcher="deepspeed", procs_per_node=1, steps=100_000,
                                     save_interval=100_000, step_seconds=0.3, grace_seconds=60))  # fmt: skip
    wait_step(training, 3)
    with PodExits(training.jobs.core, training.jobs.namespace, training.name) as exits:
        training.jobs.custom.delete_namespaced_custom_object(*training.jobs.group, training.jobs.namespace, training.jobs.plural, training.name)
        wait_for(lambda: not training.jobs.pods(training.name), "the job's pods to be gone", STOP_SECONDS, explain=training.explain)
    assert job_processes(training.name) == []
    # Each pod's program host exited 143 once its ranks had saved; past the grace period the agent's SIGKILL would show as 137.
    pods = [wiring.pod_name(training.name, r) for r in range(2)]
    assert {exits.exits.get((pod, "1")) for pod in pods} == {wiring.EXIT_PREEMPTED.code}, exits.exits
    last = steps(training)[-1]["step"]
    assert latest(training) == f"global_step{last}"
    assert os.path.isdir(training.checkpoints / f"global_step{last}")
