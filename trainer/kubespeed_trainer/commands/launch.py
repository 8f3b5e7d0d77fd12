"""`kubespeed launch`: the pod entrypoint. Reads the pod wiring, starts this node's ranks, reports how it went.

In a pod it takes no arguments: the operator sets MASTER_ADDR, MASTER_PORT,
NNODES, NODE_RANK, NPROC_PER_NODE (and the KUBESPEED_* variables, see
kubespeed/wiring.py), mounts the trainer config at KUBESPEED_TRAINER_CONFIG and
the checkpoint volume at KUBESPEED_CHECKPOINT_DIR. Flags override the
environment, for local use and tests; two "nodes" on one machine:

    kubespeed launch --nnodes 2 --node-rank 0 --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29500 -- config.yaml --checkpoint-dir /tmp/run &
    kubespeed launch --nnodes 2 --node-rank 1 --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29500 -- config.yaml --checkpoint-dir /tmp/run

Arguments after `--` go to `kubespeed train` in every rank.

The ranks are started by torch's elastic launcher (the machinery behind
`torchrun`) with static rendezvous: node rank 0 hosts the rendezvous store at
MASTER_ADDR:MASTER_PORT, and global rank = node rank x NPROC_PER_NODE + local
rank. (The DeepSpeed hostfile at KUBESPEED_HOSTFILE is for DeepSpeed's own
launcher and for people; static rendezvous needs only the master's address.)
There are no restarts inside a pod (`max_restarts=0`): a failed rank fails
the pod, and the operator restarts the whole gang, which resumes from the
newest complete checkpoint.

SIGTERM (pod deletion, preemption, suspend) is not handled by the elastic agent,
which would kill the ranks after a fixed 30 s: the launcher forwards it to its
ranks and waits, and each rank checkpoints at its next step boundary and exits
143. The pod's terminationGracePeriodSeconds bounds the wait.

Exit codes (kubespeed.wiring.EXIT_CODES; the operator restarts only when a retry can help):

| code | meaning                                                        | retry helps |
|------|----------------------------------------------------------------|-------------|
| 0    | training finished                                              | -           |
| 64   | the job's configuration is invalid (any rank exited 64)        | no          |
| 65   | a data source or tokenizer is missing or unreadable (any rank exited 65) | no |
| 69   | the pod sees fewer GPUs than ranks (any rank exited 69)        | on another node |
| 143  | stopped by SIGTERM after writing a checkpoint                  | yes (resumes) |
| 75   | anything else: a crashed or killed rank, a failed rendezvous   | yes         |

Why it failed, in the failing rank's own words, goes to the pod's termination log
(commands/failure.py), from where it reaches the job's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import dataclass
from types import FrameType

import psutil
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from kubespeed import wiring
from kubespeed_trainer.commands import failure

TRAIN_MODULE = "kubespeed_trainer.commands.train"


@dataclass(frozen=True)
class NodeWiring:
    master_addr: str
    master_port: int
    nnodes: int
    node_rank: int
    nproc_per_node: int
    job: str

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def parse_args(argv: list[str]) -> tuple[NodeWiring, list[str]]:
    """The node's wiring (flags over env over single-node defaults) and the arguments for `kubespeed train`."""
    if "--" in argv:
        cut = argv.index("--")
        own, train_args = argv[:cut], argv[cut + 1:]
    else:
        own, train_args = argv, []
    parser = argparse.ArgumentParser(prog="kubespeed launch", description="Start this node's training ranks from the pod wiring.")
    parser.add_argument("--master-addr", default=_env(wiring.ENV_MASTER_ADDR, "127.0.0.1"))
    parser.add_argument("--master-port", type=int, default=int(_env(wiring.ENV_MASTER_PORT, str(wiring.MASTER_PORT))))
    parser.add_argument("--nnodes", type=int, default=int(_env(wiring.ENV_NNODES, "1")))
    parser.add_argument("--node-rank", type=int, default=int(_env(wiring.ENV_NODE_RANK, "0")))
    parser.add_argument("--nproc-per-node", type=int, default=int(_env(wiring.ENV_NPROC_PER_NODE, "1")))
    parser.add_argument("--job", default=_env(wiring.ENV_JOB_NAME, "kubespeed"), help="rendezvous run id")
    args = parser.parse_args(own)
    node = NodeWiring(args.master_addr, args.master_port, args.nnodes, args.node_rank, args.nproc_per_node, args.job)
    if not 0 <= node.node_rank < node.nnodes:
        parser.error(f"node rank {node.node_rank} is outside {node.nnodes} nodes")
    expected = _env(wiring.ENV_WORLD_SIZE)
    if expected and int(expected) != node.world_size:
        parser.error(f"{wiring.ENV_WORLD_SIZE}={expected} but NNODES x NPROC_PER_NODE = {node.world_size}")
    if not train_args:
        train_args = [_env(wiring.ENV_TRAINER_CONFIG, wiring.TRAINER_CONFIG_PATH) or wiring.TRAINER_CONFIG_PATH]
    return node, train_args


def exit_code(failures: dict[int, int], terminated: bool) -> int:
    """The pod's exit code from its ranks' failed exit codes (empty: all succeeded)."""
    codes = set(failures.values())
    if not codes:
        return wiring.EXIT_SUCCESS.code
    for telling in (wiring.EXIT_CONFIG_ERROR, wiring.EXIT_DATA_ERROR, wiring.EXIT_NO_GPU):
        if telling.code in codes:
            return telling.code
    if terminated and wiring.EXIT_PREEMPTED.code in codes:
        # A rank exits 143 only after every rank agreed to stop and the checkpoint is complete.
        return wiring.EXIT_PREEMPTED.code
    return wiring.EXIT_RETRYABLE.code


class _Forwarder:
    """Passes SIGTERM (and SIGINT) on to the ranks, which are this process's children."""

    def __init__(self) -> None:
        self.terminated = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        children = psutil.Process().children()
        if not children:
            # Still in rendezvous: there is no rank to checkpoint, so stop here.
            raise SystemExit(wiring.EXIT_RETRYABLE.code)
        for child in children:
            try:
                child.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass


def threads_per_rank(nproc_per_node: int, cpus: int) -> int:
    """The node's CPUs shared out between its ranks, at least one each."""
    return max(1, cpus // nproc_per_node)


def launch(node: NodeWiring, train_args: list[str]) -> int:
    config = LaunchConfig(
        min_nodes=node.nnodes,
        max_nodes=node.nnodes,
        nproc_per_node=node.nproc_per_node,
        run_id=node.job,
        rdzv_backend="static",
        rdzv_endpoint=f"{node.master_addr}:{node.master_port}",
        rdzv_configs={"rank": node.node_rank},
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
        # SIGTERM goes to _Forwarder instead (see the module docstring); the agent keeps the rest.
        signals_to_handle="SIGHUP,SIGQUIT",
        logs_specs=DefaultLogsSpecs(),
    )
    # Each rank would otherwise start one OpenMP thread per CPU, and NPROC_PER_NODE
    # ranks oversubscribe the CPUs: spinning threads make small CPU ops (an LSTM's
    # time steps) ten times slower on 2 cores. torchrun sets 1; the elastic API we
    # call does not. A value the pod sets (spec.env) wins.
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(node.nproc_per_node, len(os.sched_getaffinity(0)))))
    forwarder = _Forwarder()
    forwarder.install()
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", TRAIN_MODULE, *train_args)
    except ChildFailedError as err:
        code = exit_code({rank: failed.exitcode for rank, failed in err.failures.items()}, forwarder.terminated)
        failure.write_termination_message(failure.pick(err.failures, code))
        return code
    except Exception as err:  # rendezvous timeout, store errors: retryable by definition
        message = f"kubespeed launch: {type(err).__name__}: {err}"
        print(message, file=sys.stderr)
        failure.write_termination_message(message)
        return wiring.EXIT_RETRYABLE.code
    return wiring.EXIT_SUCCESS.code


def main(argv: list[str]) -> int:
    node, train_args = parse_args(argv)
    return launch(node, train_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
