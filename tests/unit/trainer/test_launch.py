"""The launcher's wiring, exit codes and device: pure parts; and how it logs a rank's failure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from kubespeed import wiring
from kubespeed.spec.job import RunPolicy
from kubespeed_trainer.commands import failure, launch
from kubespeed_trainer.elastic import LAUNCH_DIR_ENV

WIRING_ENV = ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "WORLD_SIZE",
              "KUBESPEED_JOB", "KUBESPEED_TRAINER_CONFIG", "KUBESPEED_MAX_RESTARTS", "KUBESPEED_RENDEZVOUS_TIMEOUT",
              "KUBESPEED_STEP_TIMEOUT")


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
    node, recovery, train_args = launch.parse_args([])
    assert node == launch.NodeWiring("job-0.job", 29501, 3, 2, 4, "job")
    assert train_args == ["/etc/kubespeed/trainer.yaml"]
    assert recovery == launch.Recovery(RunPolicy().maxInPlaceRestarts, RunPolicy().startupTimeoutSeconds, None)


def test_launch_reads_the_recovery_policy_from_the_environment(pod_env):
    pod_env(KUBESPEED_MAX_RESTARTS="5", KUBESPEED_RENDEZVOUS_TIMEOUT="120", KUBESPEED_STEP_TIMEOUT="45")
    _, recovery, _ = launch.parse_args([])
    assert recovery == launch.Recovery(max_restarts=5, rendezvous_timeout=120, step_timeout=45)


def test_flags_override_the_environment_and_pass_the_rest_to_train(pod_env):
    pod_env(NNODES="3", NODE_RANK="2")
    node, _, train_args = launch.parse_args(["--nnodes", "2", "--node-rank", "1", "--", "c.yaml", "--max-steps-this-run", "3"])
    assert (node.nnodes, node.node_rank, node.master_port) == (2, 1, wiring.MASTER_PORT)
    assert train_args == ["c.yaml", "--max-steps-this-run", "3"]


@pytest.mark.parametrize(
    "name, argv, env",
    [
        ("node rank outside the gang", ["--nnodes", "2", "--node-rank", "2"], {}),
        ("world size disagrees with nodes x procs", ["--nnodes", "2", "--nproc-per-node", "2"], {"WORLD_SIZE": "3"}),
        ("negative in-place restarts", ["--max-restarts", "-1"], {}),
        ("a rendezvous that cannot wait", [], {"KUBESPEED_RENDEZVOUS_TIMEOUT": "0"}),
        ("a step watchdog of no time", ["--step-timeout", "0"], {}),
    ],
)
def test_inconsistent_wiring_is_refused(pod_env, name, argv, env):
    pod_env(**env)
    with pytest.raises(SystemExit):
        launch.parse_args(argv)


@pytest.mark.parametrize(
    "name, failures, terminated, in_place, code",
    [
        ("every rank finished", {}, False, True, 0),
        ("a rank found the config invalid", {0: 64, 1: -15}, False, True, 64),
        ("a rank could not read the data", {1: 65}, False, True, 65),
        ("a rank saw no GPU", {0: 69, 1: -15}, False, True, 69),
        ("SIGTERM and the ranks checkpointed", {0: 143, 1: 143}, True, True, 143),
        ("SIGTERM and one rank checkpointed before the agent stopped the other", {0: 143, 1: -15}, True, False, 143),
        ("143 without a SIGTERM to this pod is not a preemption", {0: 143}, False, False, 75),
        ("a rank crashed with no in-place restarts to spend", {0: 1}, False, False, 75),
        ("a rank was killed", {1: -9}, True, False, 75),
        ("a rank crashed once more than the in-place restarts allow", {0: 1}, False, True, 76),
    ],
)
def test_exit_code_tells_whether_a_retry_can_help(name, failures, terminated, in_place, code):
    assert launch.exit_code(failures, terminated, in_place) == code, name
    assert code in {e.code for e in wiring.EXIT_CODES}


@pytest.mark.parametrize("nnodes", [2, 3, 12, 1024])
def test_rendezvous_names_sort_in_node_rank_order_with_node_0_at_the_master_address(nnodes):
    # torch's c10d rendezvous ranks the nodes by sorting these names.
    nodes = [launch.NodeWiring("job-0.job", 29500, nnodes, rank, 2, "job") for rank in range(nnodes)]
    names = [node.rendezvous_name for node in nodes]
    assert sorted(names) == names and len(set(names)) == nnodes
    assert names[0] == "job-0.job"


def test_the_rendezvous_is_c10d_hosted_by_node_0_with_the_specs_timeouts():
    recovery = launch.Recovery(max_restarts=2, rendezvous_timeout=90, step_timeout=None)
    configs = [launch.launch_config(launch.NodeWiring("127.0.0.1", 29500, 2, rank, 1, "job"), recovery) for rank in range(2)]
    assert [c.rdzv_configs["is_host"] for c in configs] == [True, False]
    for config in configs:
        assert (config.rdzv_backend, config.max_restarts) == ("c10d", 2)
        assert config.rdzv_configs["join_timeout"] == 90


@pytest.mark.parametrize("nproc, cpus, threads", [(2, 2, 1), (1, 16, 16), (4, 16, 4), (8, 2, 1), (3, 8, 2)])
def test_ranks_share_the_nodes_cpus_without_oversubscribing(nproc, cpus, threads):
    assert launch.threads_per_rank(nproc, cpus) == threads


@pytest.mark.parametrize(
    "name, train_args, gpu_env, on_cpu",
    [
        ("the pod says CPU", ["config.yaml"], "0", True),
        ("the pod says GPU", ["config.yaml"], "1", False),
        ("the pod says GPU in words", ["config.yaml"], "True", False),
        ("train's --gpu false wins over the pod", ["config.yaml", "--gpu", "false"], "1", True),
        ("train's --gpu=true wins over the pod", ["config.yaml", "--gpu=true"], "0", False),
        ("train's --gpu auto leaves it to the pod", ["config.yaml", "--gpu", "auto"], "0", True),
    ],
)
def test_the_launcher_knows_the_ranks_device_as_train_decides_it(name, train_args, gpu_env, on_cpu):
    assert launch.ranks_train_on_cpu(train_args, {wiring.ENV_USE_GPU: gpu_env}) is on_cpu, name
    assert launch.rank_preload(train_args, {wiring.ENV_USE_GPU: gpu_env}) == (launch.CPU_RANK_PRELOAD if on_cpu else launch.RANK_PRELOAD)


def test_with_nothing_said_the_launcher_asks_torch_as_train_does():
    assert launch.ranks_train_on_cpu(["config.yaml"], {}) is not torch.cuda.is_available()


FAILURE_LOG_PROBE = """
import json, sys
from torch.distributed.elastic.multiprocessing import api
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException
from kubespeed_trainer.commands import launch
launch.log_rank_failures_plainly()
failures = {
    "raised": ProcessRaisedException("\\\\n\\\\n-- Process 0 terminated with the following error:\\\\nRuntimeError: gloo: Connection reset by peer", 0, 7),
    "exited": ProcessExitedException("process 0 terminated with exit code 64", 0, 7, 64),
}
try:
    raise failures[sys.argv[1]]
except Exception:
    api.logger.exception("failed (exitcode: %s) local_rank: %s", 1, 0)
print(json.dumps("torch._dynamo" in sys.modules))
"""


@pytest.mark.parametrize(
    "failure, says",
    [("raised", ["failed (exitcode: 1) local_rank: 0", "RuntimeError: gloo: Connection reset by peer"]),
     ("exited", ["failed (exitcode: 1) local_rank: 0"])],
    ids=["a rank that raised: its own error, not the agent's traceback", "a rank that exited: the line alone"],
)
def test_a_rank_failure_is_logged_without_the_agents_traceback_or_loading_torch_dynamo(failure, says):
    # Formatting a traceback, torch's log formatter imports torch._dynamo: seconds, in the launcher, at
    # the moment the ranks should restart.
    result = subprocess.run([sys.executable, "-c", FAILURE_LOG_PROBE, failure], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) is False
    assert all(words in result.stderr for words in says), result.stderr
    assert "Traceback" not in result.stderr and 'File "<string>"' not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "name, exits, recorded, code, says",
    [
        ("a peer's reset connection, seen first, does not hide a rank's data error",
         {1: 1}, (65, "spec.data: data source x does not exist"), 65, "rank 0: spec.data: data source x does not exist"),
        ("a crash with no permanent failure spends the in-place restarts", {1: 1}, None, 76,
         "rank 1: exited with code 1 without saying why (see the pod's log)"),
        ("a rank's own permanent exit decides", {0: 64}, None, 64, "rank 0: exited with code 64 without saying why (see the pod's log)"),
    ],
)
def test_when_the_ranks_failed_for_good_a_permanent_failure_decides_the_pods_exit(tmp_path, monkeypatch, name, exits, recorded, code, says):
    if recorded is not None:
        monkeypatch.setenv(LAUNCH_DIR_ENV, str(tmp_path))
        monkeypatch.setenv("RANK", "0")
        monkeypatch.delenv(failure.ERROR_FILE_ENV, raising=False)
        failure.record(recorded[1], recorded[0])
    failures = {rank: ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(tmp_path / f"error-{rank}.json"))
                for rank, exitcode in exits.items()}
    assert launch.ranks_failed(failures, terminated=False, in_place=True, launch_dir=str(tmp_path)) == (code, says), name
