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

import pytest

from agent import NodeAgent
from agent.images import chart_trainer_image
from kubespeed_cli.dev.cluster import ControlPlane

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
