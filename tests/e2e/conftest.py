"""e2e fixtures: the test node agent running the fake GPU nodes' pods as local processes.

    def test_training(control_plane, node_agent, namespace):
        ...  # pods of `namespace` scheduled onto node_agent.nodes really run

Pod addresses live in the agent's node network namespace (see agent/netns.py): run
anything that must reach a pod IP there, e.g. the operator:
`subprocess.Popen(node_agent.network.command([...]), env=control_plane.env())`
(the API server's port is relayed into that namespace), or in-process:
`with node_agent.network.entered(): urllib.request.urlopen(f"http://{pod_ip}:9400/metrics")`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent import NodeAgent
from kubespeed.devcluster.cluster import ControlPlane

REPO = Path(__file__).resolve().parents[2]


def trainer_image() -> str:
    """The image jobs name by default: the chart's trainer image."""
    values = yaml.safe_load((REPO / "charts" / "kubespeed" / "values.yaml").read_text())
    return values["trainer"]["image"]


@pytest.fixture(scope="module")
def node_agent(control_plane: ControlPlane, gpu_nodes: list[str]) -> Iterator[NodeAgent]:
    """An agent for the session's fake GPU nodes, for one test module; on teardown every
    pod process is killed and the agent's namespaces and files are gone (even after a failure).
    Module scope: after the e2e modules, the nodes again have no kubelet, as the
    integration tests expect."""
    agent = NodeAgent(control_plane.api_client(), gpu_nodes, [trainer_image()])
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
