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
`torchrun`) with its c10d rendezvous: node rank 0's launcher hosts the
rendezvous store at MASTER_ADDR:MASTER_PORT (told so, not guessed from host
names), and global rank = node rank x NPROC_PER_NODE + local rank. (The
DeepSpeed hostfile at KUBESPEED_HOSTFILE is for DeepSpeed's own launcher and for
people; the rendezvous needs only the master's address.) Each rank is forked from
a forkserver that imported torch once (torch elastic's `forkserver` start method
with a preload), and DeepSpeed with the trainer's engine too when the ranks train on
the CPU (commands/rank_preload.py): importing them is most of a rank's start-up, and
so of an in-place restart. `ps` shows the ranks as `rank<R>-local<L>` (see elastic.py).

Recovery is in place first. When a rank fails (crashes, is killed, or freezes
past KUBESPEED_STEP_TIMEOUT and is killed by the step watchdog), every node's
launcher stops its ranks, the launchers meet again in a new rendezvous round,
and new ranks resume from the newest complete checkpoint: the pods stay. Up to
KUBESPEED_MAX_RESTARTS times (runPolicy.maxInPlaceRestarts) per pod; after that,
or when a peer gave up, the launcher exits 76 and the operator recreates the
gang. A rendezvous round waits KUBESPEED_RENDEZVOUS_TIMEOUT seconds
(runPolicy.startupTimeoutSeconds) for every node.

Two settings make the restarts reliable (measured: without them, 2 of 6
restarts in a row of two nodes failed in gloo's connectFullMesh):
- TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: by default the ranks' process group
  uses the rendezvous store the launchers share for every round, so restarted
  ranks read the last round's keys (the addresses of ranks that are gone) and
  connect to dead ports. With it, rank 0 hosts a fresh store for each round.
- `local_addr`: c10d numbers the nodes by sorting their `local_addr` and
  publishes rank 0's as the address of that store. Node rank 0 gives
  MASTER_ADDR (where its peers reach it, in a pod and under `kubespeed local`),
  every other node a name that sorts after it in node-rank order and is never
  dialled. So rank 0, which serves the metrics the operator reads, is always in
  pod 0, whatever the host names are.

SIGTERM (pod deletion, preemption, suspend) is not handled by the elastic agent,
which would kill the ranks after a fixed 30 s: the launcher forwards it to its
ranks and waits, and each rank checkpoints at its next step boundary and exits
143. The pod's terminationGracePeriodSeconds bounds the wait. The ranks' exits
then end the launcher, never an in-place restart. Each rank dies with its
launcher, however the launcher ends (see elastic.py).

Exit codes (kubespeed.wiring.EXIT_CODES; the operator restarts only when a retry can help):

| code | meaning                                                        | retry helps |
|------|----------------------------------------------------------------|-------------|
| 0    | training finished                                              | -           |
| 64   | the job's configuration is invalid (any rank exited 64)        | no          |
| 65   | a data source or tokenizer is missing or unreadable (any rank exited 65) | no |
| 69   | the pod sees fewer GPUs than ranks (any rank exited 69)        | on another node |
| 143  | stopped by SIGTERM after writing a checkpoint                  | yes (resumes) |
| 76   | ranks failed and in-place restarts are spent (or a peer gave up) | yes (a new gang) |
| 75   | anything else: a crashed or killed rank, a failed rendezvous   | yes         |

Why it failed, in the failing rank's own words, goes to the pod's termination log
(commands/failure.py), from where it reaches the job's status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

import psutil
import torch
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousClosedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

from kubespeed import wiring
from kubespeed.spec.job import RunPolicy
from kubespeed_trainer import elastic
from kubespeed_trainer.commands import failure

TRAIN_MODULE = "kubespeed_trainer.commands.train"
# What the forkserver imports once for every rank it forks; importing them changes nothing in
# the environment the ranks inherit. Not DeepSpeed, which picks its accelerator at import: on
# a GPU that initialises CUDA, which a forked child cannot use (torch initialises CUDA lazily,
# never at import). Not torch._dynamo, which writes TorchInductor's cache directory into the
# environment at import, before a rank can point it at the checkpoint volume
# (engine/compilation.py). This module too: a rank receives its entrypoint, `run_rank`, by
# reference, and would import the elastic agent's modules for it (half a second) after the fork.
RANK_PRELOAD = ("torch", "torch.distributed", TRAIN_MODULE, "kubespeed_trainer.commands.launch")
# Ranks on DeepSpeed's CPU accelerator are forked with DeepSpeed and torch._dynamo loaded too:
# no CUDA to initialise, and that module puts the environment back as it was.
CPU_RANK_PRELOAD = (*RANK_PRELOAD, "kubespeed_trainer.commands.rank_preload")
ELASTIC_PROCESSES_LOGGER = "torch.distributed.elastic.multiprocessing.api"
# Node ranks are below 1024 (spec.nodes), so four digits keep the names in node-rank order.
NODE_RANK_DIGITS = 4


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

    @property
    def rendezvous_name(self) -> str:
        """This node's `local_addr` in torch's c10d rendezvous (see the module docstring)."""
        if self.node_rank == 0:
            return self.master_addr
        return f"{self.master_addr}~{self.node_rank:0{NODE_RANK_DIGITS}d}"


@dataclass(frozen=True)
class Recovery:
    """runPolicy, as the pod's launcher applies it."""

    max_restarts: int
    rendezvous_timeout: int
    step_timeout: int | None


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def parse_args(argv: list[str]) -> tuple[NodeWiring, Recovery, list[str]]:
    """The node's wiring and recovery (flags over env over single-node defaults) and the arguments for `kubespeed train`."""
    if "--" in argv:
        cut = argv.index("--")
        own, train_args = argv[:cut], argv[cut + 1:]
    else:
        own, train_args = argv, []
    defaults = RunPolicy()
    parser = argparse.ArgumentParser(prog="kubespeed launch", description="Start this node's training ranks from the pod wiring.")
    parser.add_argument("--master-addr", default=_env(wiring.ENV_MASTER_ADDR, "127.0.0.1"))
    parser.add_argument("--master-port", type=int, default=int(_env(wiring.ENV_MASTER_PORT, str(wiring.MASTER_PORT))))
    parser.add_argument("--nnodes", type=int, default=int(_env(wiring.ENV_NNODES, "1")))
    parser.add_argument("--node-rank", type=int, default=int(_env(wiring.ENV_NODE_RANK, "0")))
    parser.add_argument("--nproc-per-node", type=int, default=int(_env(wiring.ENV_NPROC_PER_NODE, "1")))
    parser.add_argument("--job", default=_env(wiring.ENV_JOB_NAME, "kubespeed"), help="rendezvous run id")
    parser.add_argument("--max-restarts", type=int, default=int(_env(wiring.ENV_MAX_RESTARTS, str(defaults.maxInPlaceRestarts))),
                        help="in-place restarts of the ranks before the launcher gives up (0: none)")
    parser.add_argument("--rendezvous-timeout", type=int,
                        default=int(_env(wiring.ENV_RENDEZVOUS_TIMEOUT, str(defaults.startupTimeoutSeconds))),
                        help="seconds a rendezvous round waits for every node")
    parser.add_argument("--step-timeout", type=int, default=_env(wiring.ENV_STEP_TIMEOUT),
                        help="seconds a rank may spend on one step before the watchdog kills it (default: no watchdog)")
    args = parser.parse_args(own)
    node = NodeWiring(args.master_addr, args.master_port, args.nnodes, args.node_rank, args.nproc_per_node, args.job)
    if not 0 <= node.node_rank < node.nnodes:
        parser.error(f"node rank {node.node_rank} is outside {node.nnodes} nodes")
    expected = _env(wiring.ENV_WORLD_SIZE)
    if expected and int(expected) != node.world_size:
        parser.error(f"{wiring.ENV_WORLD_SIZE}={expected} but NNODES x NPROC_PER_NODE = {node.world_size}")
    if args.max_restarts < 0 or args.rendezvous_timeout <= 0 or (args.step_timeout is not None and args.step_timeout <= 0):
        parser.error("--max-restarts must be 0 or more, --rendezvous-timeout and --step-timeout more than 0")
    recovery = Recovery(args.max_restarts, args.rendezvous_timeout, args.step_timeout)
    if not train_args:
        train_args = [_env(wiring.ENV_TRAINER_CONFIG, wiring.TRAINER_CONFIG_PATH) or wiring.TRAINER_CONFIG_PATH]
    return node, recovery, train_args


def exit_code(failures: dict[int, int], terminated: bool, in_place: bool = False) -> int:
    """The pod's exit code from its ranks' failed exit codes (empty: all succeeded).

    `in_place`: the ranks had in-place restarts to spend, so a failure that ends
    the launcher means they are spent.
    """
    codes = set(failures.values())
    if not codes:
        return wiring.EXIT_SUCCESS.code
    for telling in (wiring.EXIT_CONFIG_ERROR, wiring.EXIT_DATA_ERROR, wiring.EXIT_NO_GPU):
        if telling.code in codes:
            return telling.code
    if terminated and wiring.EXIT_PREEMPTED.code in codes:
        # A rank exits 143 only after every rank agreed to stop and the checkpoint is complete.
        return wiring.EXIT_PREEMPTED.code
    return wiring.EXIT_IN_PLACE_FAILED.code if in_place else wiring.EXIT_RETRYABLE.code


def ranks_failed(failures: dict[int, ProcessFailure], terminated: bool, in_place: bool, launch_dir: str) -> tuple[int, str]:
    """The pod's exit code and termination message when its ranks failed and the agent gave up.

    A permanent failure that a rank recorded in any restart round wins: the agent reports the
    first rank it saw end, which may be a peer that failed on that rank's exit (its connection
    reset) while the rank itself was still shutting down.
    """
    code = exit_code({local: failed.exitcode for local, failed in failures.items()}, terminated, in_place)
    found = failure.permanent(launch_dir)
    if found is not None and code not in wiring.PERMANENT_EXIT_CODES:
        return found
    return code, failure.pick(failures, code)


def _ended_early(err: Exception, launch_dir: str, code: int) -> int:
    """The launcher's exit when the rendezvous ended it: a rank's permanent failure wins over `code`,
    so a gang whose ranks all refuse their config fails at once instead of being tried again."""
    found = failure.permanent(launch_dir)
    if found is None:
        message = f"kubespeed launch: {type(err).__name__}: {err}"
        print(message, file=sys.stderr)
        failure.write_termination_message(message)
        return code
    print(f"kubespeed launch: {type(err).__name__} after {found[1]}", file=sys.stderr)
    failure.write_termination_message(found[1])
    return found[0]


class _Forwarder:
    """Passes SIGTERM (and SIGINT) on to the ranks, registered in the launcher's folder, and ends the launcher with them."""

    def __init__(self, launch_dir: str) -> None:
        self.launch_dir = launch_dir
        self.terminated = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        ranks = []
        for pid in elastic.live_ranks(self.launch_dir):
            try:
                process = psutil.Process(pid)
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                continue
            ranks.append(process)
        if not ranks:
            # In a rendezvous or between restarts: there is no rank to checkpoint, so stop here.
            raise SystemExit(wiring.EXIT_RETRYABLE.code)
        # Waiting here, where the signal interrupted the elastic agent's monitor loop, keeps
        # the agent from taking the ranks' exits for failures and restarting them in place:
        # a pod told to stop stops, with the code its ranks exit with.
        psutil.wait_procs(ranks)
        codes = {rank.pid: elastic.exit_code_of(self.launch_dir, rank.pid) for rank in ranks}
        # A rank that died without saying how was killed.
        failures = {pid: -signal.SIGKILL if code is None else code for pid, code in codes.items() if code != 0}
        raise SystemExit(exit_code(failures, terminated=True))


def threads_per_rank(nproc_per_node: int, cpus: int) -> int:
    """The node's CPUs shared out between its ranks, at least one each."""
    return max(1, cpus // nproc_per_node)


def launch_config(node: NodeWiring, recovery: Recovery) -> LaunchConfig:
    return LaunchConfig(
        min_nodes=node.nnodes,
        max_nodes=node.nnodes,
        nproc_per_node=node.nproc_per_node,
        run_id=node.job,
        rdzv_backend="c10d",
        rdzv_endpoint=f"{node.master_addr}:{node.master_port}",
        rdzv_configs={
            # torch would guess by matching MASTER_ADDR against this machine's names, which
            # fails in a pod (`<job>-0.<job>` is not its host name) and is true on every
            # node under `kubespeed local` (127.0.0.1).
            "is_host": node.node_rank == 0,
            "join_timeout": recovery.rendezvous_timeout,
            # Also how long a node waits to reach node rank 0's store, which may start later.
            "read_timeout": recovery.rendezvous_timeout,
        },
        local_addr=node.rendezvous_name,
        max_restarts=recovery.max_restarts,
        start_method="forkserver",
        # SIGTERM goes to _Forwarder instead (see the module docstring); the agent keeps the rest.
        signals_to_handle="SIGHUP,SIGQUIT",
        logs_specs=DefaultLogsSpecs(),
    )


class _RankFailureWithoutAgentTraceback(logging.Filter):
    """torch elastic logs a rank's failure with the traceback of its own wait for the rank, which
    says nothing: a config error (exit 64) would read as a crash. Formatting it costs more than
    words: torch's log formatter imports torch._dynamo for any traceback, seconds that a restart
    in place waited for on the node whose rank raised. The line stays, with what the rank raised
    (the exception's text holds the rank's own traceback); a rank's words are also in its log and
    the termination message."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ProcessRaisedException):
            record.msg, record.args = f"{record.getMessage()}\n{error}", None
        if isinstance(error, (ProcessExitedException, ProcessRaisedException)):
            record.exc_info = None
        return True


def log_rank_failures_plainly() -> None:
    logging.getLogger(ELASTIC_PROCESSES_LOGGER).addFilter(_RankFailureWithoutAgentTraceback())


def ranks_train_on_cpu(train_args: list[str], env: Mapping[str, str]) -> bool:
    """Whether the ranks will choose the CPU, decided as `kubespeed train` decides: its `--gpu`
    flag, else KUBESPEED_GPU, else whether torch sees a GPU. (The forkserver is a process of its
    own, started afresh: asking torch here initialises nothing in the ranks.)"""
    flag = argparse.ArgumentParser(add_help=False)
    flag.add_argument("--gpu", choices=("auto", "true", "false"), default="auto")
    chosen = flag.parse_known_args(train_args)[0].gpu
    gpu = wiring.gpu_choice(env.get(wiring.ENV_USE_GPU)) if chosen == "auto" else chosen == "true"
    if gpu is None:
        gpu = torch.cuda.is_available()
    return not gpu


def rank_preload(train_args: list[str], env: Mapping[str, str]) -> tuple[str, ...]:
    """What the forkserver imports once for every rank it forks."""
    return CPU_RANK_PRELOAD if ranks_train_on_cpu(train_args, env) else RANK_PRELOAD


def run_rank(train_args: list[str]) -> None:
    """A rank, in a process forked from the forkserver (which imported the train command already;
    the launcher itself never does)."""
    importlib.import_module(TRAIN_MODULE).rank(train_args)


def launch(node: NodeWiring, recovery: Recovery, train_args: list[str]) -> int:
    config = launch_config(node, recovery)
    # Each rank would otherwise start one OpenMP thread per CPU, and NPROC_PER_NODE
    # ranks oversubscribe the CPUs: spinning threads make small CPU ops (an LSTM's
    # time steps) ten times slower on 2 cores. torchrun sets 1; the elastic API we
    # call does not. A value the pod sets (spec.env) wins.
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(node.nproc_per_node, len(os.sched_getaffinity(0)))))
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    launch_dir = tempfile.mkdtemp(prefix="kubespeed-launch-")
    watchdog = None
    if recovery.step_timeout is not None:
        os.environ[wiring.ENV_STEP_TIMEOUT] = str(recovery.step_timeout)
        os.environ[wiring.ENV_RENDEZVOUS_TIMEOUT] = str(recovery.rendezvous_timeout)
        watchdog = elastic.RankWatchdog.start_in(launch_dir, node.job)
    os.environ.update(elastic.launcher_env(os.getpid(), launch_dir, watchdog))
    # The forkserver takes this environment. Started now, it imports torch while the
    # launchers meet in the rendezvous, instead of after.
    multiprocessing.set_forkserver_preload(list(rank_preload(train_args, os.environ)))
    log_rank_failures_plainly()
    multiprocessing.forkserver.ensure_running()
    forwarder = _Forwarder(launch_dir)
    forwarder.install()
    in_place = recovery.max_restarts > 0
    try:
        elastic_launch(config, entrypoint=run_rank)(train_args)
    except ChildFailedError as err:
        code, message = ranks_failed(err.failures, forwarder.terminated, in_place, launch_dir)
        failure.write_termination_message(message)
        return code
    except RendezvousClosedError as err:
        # Another node's launcher gave up (its restarts spent) or was stopped.
        return _ended_early(err, launch_dir, wiring.EXIT_IN_PLACE_FAILED.code if in_place else wiring.EXIT_RETRYABLE.code)
    except Exception as err:  # rendezvous timeout, store errors: retryable by definition
        return _ended_early(err, launch_dir, wiring.EXIT_RETRYABLE.code)
    finally:
        if watchdog is not None:
            watchdog.stop()
        shutil.rmtree(launch_dir, ignore_errors=True)
    return wiring.EXIT_SUCCESS.code


def main(argv: list[str]) -> int:
    node, recovery, train_args = parse_args(argv)
    return launch(node, recovery, train_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
