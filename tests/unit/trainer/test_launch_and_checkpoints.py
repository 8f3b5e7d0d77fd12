"""The launcher's wiring and exit codes, and which checkpoints count: pure parts, no processes."""

from __future__ import annotations

import pytest

from kubespeed import wiring
from kubespeed import checkpoints
from kubespeed_trainer.commands import launch
from kubespeed_trainer.engine import checkpoint

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


def make_tag(directory, step: int, complete: bool) -> str:
    tag = checkpoints.tag_for(step)
    (directory / tag).mkdir(parents=True)
    if complete:
        (directory / tag / checkpoints.COMPLETE_MARKER).write_text("{}")
    return tag


def test_only_complete_checkpoints_count_and_latest_falls_back_to_the_newest_complete(tmp_path):
    make_tag(tmp_path, 100, True)
    newest = make_tag(tmp_path, 200, True)
    half_written = make_tag(tmp_path, 300, False)
    (tmp_path / checkpoints.LATEST_FILE).write_text(half_written)
    assert checkpoints.complete_tags(tmp_path) == [checkpoints.tag_for(100), newest]
    assert checkpoints.latest_complete(tmp_path) == newest


def test_an_empty_or_missing_directory_has_no_checkpoint(tmp_path):
    assert checkpoints.latest_complete(tmp_path / "absent") is None
    assert checkpoints.latest_complete(tmp_path) is None


def test_prune_keeps_the_newest_complete_and_drops_leftovers(tmp_path):
    for step in (10, 20, 30):
        make_tag(tmp_path, step, True)
    make_tag(tmp_path, 25, False)
    deleted = checkpoint.prune(tmp_path, keep=2)
    assert sorted(deleted) == [checkpoints.tag_for(10), checkpoints.tag_for(25)]
    assert checkpoints.complete_tags(tmp_path) == [checkpoints.tag_for(20), checkpoints.tag_for(30)]


def test_tags_sort_by_step_as_text_too():
    tags = [checkpoints.tag_for(s) for s in (9, 10, 100)]
    assert sorted(tags) == tags and [checkpoints.step_of(t) for t in tags] == [9, 10, 100]
