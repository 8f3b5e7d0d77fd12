"""The trainer image, built here, runs a job's pods: `kubespeed launch` training on two pods and
a user's DeepSpeed program started by DeepSpeed's launcher, both to success.

The image is the Dockerfile's `trainer` target built from a Debian base with the same torch and
DeepSpeed pins as the released image, which is built from NVIDIA's CUDA images that cannot be
pulled here (cli/kubespeed_cli/dev/image.py: TRAINER_BUILD_ARGS). The test node agent runs
the pods in it: each container's root is the image's own files (mounted from podman's storage,
read-only), with its entrypoint, user, working directory and environment (HOME, XDG_CACHE_HOME,
PATH), the pods' volumes over them, in the pods' network. Training is DeepSpeed over gloo on
the CPU. What stays unverified (CUDA, NCCL, the prebuilt GPU ops) is listed in README.

Building costs many minutes and gigabytes, so it runs only when the trainer image's recipe
changed since tests/e2e/trainer-image.proven (see image_gate.py).

    .venv/bin/python -m pytest tests/e2e/test_trainer_image.py -rs
"""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent import NodeAgent
from agent.images import LocalImage, built_image, chart_trainer_image
from image_gate import ImageGate
from test_program_training import PROGRAM, program_job, steps
from training_helpers import Training, of_kind, rank_process, start

from kubespeed import wiring
from kubespeed_cli.dev import image as images

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GATE = ImageGate("trainer")
PROGRAM_DIR = "/opt/program"


@pytest.fixture(scope="module")
def trainer_image() -> images.Built:
    return GATE.built()


@pytest.fixture(scope="module")
def proven(trainer_image: images.Built) -> Iterator[set[str]]:
    """The tests that passed; once every test of this module has, the recipe key is written as proven."""
    passed: set[str] = set()
    yield passed
    if passed == {"launcher", "program"}:
        GATE.record(trainer_image)


@pytest.fixture(scope="module")
def image_in_agent(node_agent: NodeAgent, trainer_image: images.Built) -> Iterator[LocalImage]:
    """The agent runs the built image for the chart's trainer image (the jobs' default image and the
    program host's init container) and under its own name, for this module."""
    inspect = images.podman("image", "inspect", "--format", "{{json .Config}}", trainer_image.image)
    config = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
    mounted = subprocess.run(images.podman("image", "mount", trainer_image.image), capture_output=True, text=True, check=True)
    image = built_image(mounted.stdout.strip(), config)
    saved = dict(node_agent.images)
    node_agent.images.clear()
    node_agent.images.update({chart_trainer_image(): image, trainer_image.image: image})
    try:
        yield image
    finally:
        node_agent.images.clear()
        node_agent.images.update(saved)
        subprocess.run(images.podman("image", "unmount", trainer_image.image), capture_output=True)


def test_the_images_launcher_trains_two_pods_as_the_image_user_on_its_read_only_files(
    training: Training, image_in_agent: LocalImage, proven: set[str]
) -> None:
    image = image_in_agent
    assert image.entrypoint == wiring.TRAINER_ENTRYPOINT and (image.uid, image.gid) == (wiring.TRAINER_UID, wiring.TRAINER_GID)
    assert not Path("/opt/kubespeed").exists(), "this machine must not have the image's venv, or the test proves nothing"
    start(training, steps=60, checkpoint_interval=20)
    training.wait_step(1)
    rank = rank_process(training.agent, training.name, node_rank=1, local_rank=0)
    root = Path(f"/proc/{rank.pid}/root")
    env = rank.environ()
    assert rank.cmdline()[0].startswith("/opt/kubespeed/bin/python"), rank.cmdline()
    assert (env["HOME"], env["XDG_CACHE_HOME"]) == (wiring.WORK_DIR, wiring.CACHE_DIR)
    assert rank.uids().real == wiring.TRAINER_UID
    with pytest.raises(OSError) as denied:
        (root / "opt" / "kubespeed" / "written").write_text("")
    assert denied.value.errno == errno.EROFS

    status = training.wait_phase("Succeeded")
    assert status["progress"]["step"] == 60 and status["checkpoint"]["step"] == 60
    trained = of_kind(training.metrics(), "train")
    assert trained[-1]["step"] == 60 and trained[-1]["loss"] < trained[0]["loss"]
    proven.add("launcher")


def test_a_users_deepspeed_program_runs_in_the_image_under_deepspeeds_launcher(
    training: Training, image_in_agent: LocalImage, trainer_image: images.Built, proven: set[str]
) -> None:
    """Two pods of one rank; DeepSpeed's CPU backend compiles its shared-memory op with the image's
    g++ and Python.h at start-up, once, in the checkpoint claim both pods share."""
    training.jobs.core.create_namespaced_config_map(
        training.jobs.namespace, {"metadata": {"name": f"{training.name}-program"}, "data": {PROGRAM.name: PROGRAM.read_text()}}
    )
    total = 12
    job = program_job(training.name, trainer_image.image, launcher="deepspeed", procs_per_node=1, steps=total, save_interval=6)
    job["spec"]["program"]["command"][0] = f"{PROGRAM_DIR}/{PROGRAM.name}"
    job["spec"]["env"] = [{"name": "TORCH_EXTENSIONS_DIR", "value": f"{wiring.CHECKPOINT_DIR_DEFAULT}/torch-extensions"}]
    job["spec"]["podTemplate"] = {"spec": {
        "containers": [{"name": wiring.TRAINER_CONTAINER_NAME, "volumeMounts": [{"name": "program", "mountPath": PROGRAM_DIR, "readOnly": True}]}],
        "volumes": [{"name": "program", "configMap": {"name": f"{training.name}-program"}}],
    }}  # fmt: skip
    training.jobs.create(job)
    training.wait_phase("Succeeded")
    record = steps(training)
    assert [s["step"] for s in record] == list(range(1, total + 1))
    assert (training.checkpoints / f"global_step{total}" / "mp_rank_00_model_states.pt").is_file()
    assert any((training.checkpoints / "torch-extensions").rglob("*.so")), "DeepSpeed's op was not built in the image"
    proven.add("program")
