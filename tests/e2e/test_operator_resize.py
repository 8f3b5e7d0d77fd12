"""A resize, end to end: real operator (under the shipped RBAC), real control plane, the test node
agent as kubelet, real DeepSpeed over gloo on the CPU, the tiny GPT at ZeRO stage 1.

`kubectl scale` (the CRD's scale subresource) takes a running 2-pod job to 1 pod: the ranks
checkpoint at SIGTERM, the operator brings the ConfigMap's hostfile up to date and starts a gang
of 1, whose rank converts the checkpoint to DeepSpeed's universal format and resumes from it with
the same global batch, at the same place in the data.

    .venv/bin/python -m pytest tests/e2e/test_operator_resize.py
"""

from __future__ import annotations

from training_helpers import Training, of_kind, start

from kubespeed import wiring

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 30
GLOBAL_BATCH = 8


def test_kubectl_scale_shrinks_a_running_job_which_resumes_from_its_sigterm_checkpoint(training: Training) -> None:
    # No periodic checkpoint: the one the new gang resumes from is the one written at SIGTERM.
    start(training, steps=STEPS, checkpoint_interval=1000)
    before = training.wait_step(5)
    jobs = training.jobs
    jobs.custom.patch_namespaced_custom_object_scale(*jobs.group, jobs.namespace, jobs.plural, training.name, {"spec": {"replicas": 1}})
    status = training.wait_phase("Succeeded")

    assert (status["nodes"], status["resizes"], status["attempt"], status["restarts"]) == (1, 1, 2, 0)
    assert status["selector"] == f"{wiring.JOB_LABEL}={training.name}"
    assert [e for e in jobs.events(training.name) if e[1] == "Resizing"] == [
        ("Normal", "Resizing", "resizing from 2 to 1 nodes: the ranks of attempt 1 write a checkpoint at SIGTERM, and "
                               "attempt 2 resumes from it with 1 nodes")]
    config = jobs.core.read_namespaced_config_map(wiring.config_map_name(training.name), jobs.namespace)
    assert config.data[wiring.HOSTFILE_KEY].strip().splitlines() == [f"{wiring.pod_host(training.name, 0)} slots=1"]

    lines = training.metrics()
    # Attempt 1's one checkpoint is the one written at SIGTERM; attempt 2 writes the last.
    saved, last = (line["step"] for line in of_kind(lines, "checkpoint"))
    assert saved >= before and last == STEPS
    (resume,) = of_kind(lines, "resume")
    assert (resume["step"], resume["dataParallelSize"], resume["resizedFrom"]) == (saved, 1, 2)
    starts = of_kind(lines, "start")
    assert [(s["worldSize"], s["gradientAccumulation"]) for s in starts] == [(2, 2), (1, 4)]
    trained = {line["step"]: line for line in of_kind(lines, "train")}
    assert sorted(trained) == list(range(1, STEPS + 1))
    # The same global batch at every step, and no sample seen twice or skipped across the resize.
    assert all(line["samplesDrawn"] == GLOBAL_BATCH * step for step, line in trained.items())
