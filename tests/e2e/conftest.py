"""e2e fixtures: the test node agent running the fake GPU nodes' pods as local processes, and
the operator and a training job on top of it.

    def test_pods(control_plane, node_agent, namespace):
        ...  # pods of `namespace` scheduled onto node_agent.nodes really run

    def test_training(training):
        start(training, steps=40, checkpoint_interval=10)   # training_helpers.start
        training.wait_phase("Succeeded")

Pod addresses live in the agent's node network namespace (see agent/netns.py): run
anything that must reach a pod IP there, e.g. the operator:
`subprocess.Popen(node_agent.network.command([...]), env=control_plane.env())`
(the API server's port is relayed into that namespace), or in-process:
`with node_agent.network.entered(): urllib.request.urlopen(f"http://{pod_ip}:9400/metrics")`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import NodeAgent
from agent.images import chart_trainer_image
from kubespeed import wiring
from kubespeed_cli.dev.cluster import ControlPlane
from training_helpers import (
    DATA_CLAIM,
    STOP_SECONDS,
    NodeNetworkOperator,
    Training,
    claim_volume,
    fill_data_claim,
    job_processes,
    kill_processes,
    processes_of,
    wait_for,
)
from operator_fixture import JobClient, install_crd, install_operator_rbac, operator_kubeconfig


@pytest.fixture(scope="module")
def node_agent(control_plane: ControlPlane, gpu_nodes: list[str]) -> Iterator[NodeAgent]:
    """An agent for the session's fake GPU nodes, for one test module; on teardown every
    pod process is killed and the agent's namespaces and files are gone (even after a failure).
    Module scope: after the e2e modules, the nodes again have no kubelet, as the
    integration tests expect."""
    agent = NodeAgent(control_plane.api_client(), gpu_nodes, [chart_trainer_image()])
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()


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


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A `kubespeed local` run folder; on teardown no process of its pods may be left (stragglers killed)."""
    run_dir = tmp_path / "runs"
    yield run_dir
    leftovers = processes_of(run_dir)
    for proc in leftovers:
        proc.kill()
    assert leftovers == [], "kubespeed local left processes behind"
