"""The launcher's wiring and exit codes: pure parts, no processes."""

from __future__ import annotations

import pytest

from kubespeed import wiring
from kubespeed_trainer.commands import launch

WIRING_ENV = ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "WORLD_SIZE",
              "KUBESPEED_JOB", "KUBESPEED_TRAINER_CONFIG")


@pytest.fixture
def pod_env(monkeypatch):
    for name in WIRING_ENV:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_launch_reads_the_pod_wiring_from_the_environment(pod_env):
    pod_env(MASTER_ADDR="job-0.job", MASTER_PORT="29501", NNODES="3", NODE_RANK="2", NPROC_PER_NODE="4",
            WORLD_SIZE="12", KUBESPEED_JOB="job", KUBESPEED_TRAINER_CONFIG="/etc/kubespeed/trainer.yaml")
    node, train_args = launch.parse_args([])
    assert node == launch.NodeWiring("job-0.job", 29501, 3, 2, 4, "job")
    assert train_args == ["/etc/kubespeed/trainer.yaml"]


def test_flags_override_the_environment_and_pass_the_rest_to_train(pod_env):
    pod_env(NNODES="3", NODE_RANK="2")
    node, train_args = launch.parse_args(["--nnodes", "2", "--node-rank", "1", "--", "c.yaml", "--max-steps-this-run", "3"])
    assert (node.nnodes, node.node_rank, node.master_port) == (2, 1, wiring.MASTER_PORT)
    assert train_args == ["c.yaml", "--max-steps-this-run", "3"]


@pytest.mark.parametrize(
    "name, argv, env",
    [
        ("node rank outside the gang", ["--nnodes", "2", "--node-rank", "2"], {}),
        ("world size disagrees with nodes x procs", ["--nnodes", "2", "--nproc-per-node", "2"], {"WORLD_SIZE": "3"}),
    ],
)
def test_inconsistent_wiring_is_refused(pod_env, name, argv, env):
    pod_env(**env)
    with pytest.raises(SystemExit):
        launch.parse_args(argv)


@pytest.mark.parametrize(
    "name, failures, terminated, code",
    [
        ("every rank finished", {}, False, 0),
        ("a rank found the config invalid", {0: 64, 1: -15}, False, 64),
        ("a rank could not read the data", {1: 65}, False, 65),
        ("a rank saw no GPU", {0: 69, 1: -15}, False, 69),
        ("SIGTERM and the ranks checkpointed", {0: 143, 1: 143}, True, 143),
        ("SIGTERM and one rank checkpointed before the agent stopped the other", {0: 143, 1: -15}, True, 143),
        ("143 without a SIGTERM to this pod is not a preemption", {0: 143}, False, 75),
        ("a rank crashed", {0: 1}, False, 75),
        ("a rank was killed", {1: -9}, True, 75),
    ],
)
def test_exit_code_tells_whether_a_retry_can_help(name, failures, terminated, code):
    assert launch.exit_code(failures, terminated) == code, name
    assert code in {e.code for e in wiring.EXIT_CODES}


@pytest.mark.parametrize("nproc, cpus, threads", [(2, 2, 1), (1, 16, 16), (4, 16, 4), (8, 2, 1), (3, 8, 2)])
def test_ranks_share_the_nodes_cpus_without_oversubscribing(nproc, cpus, threads):
    assert launch.threads_per_rank(nproc, cpus) == threads
