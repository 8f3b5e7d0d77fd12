"""How fast a job heals: a killed rank in place, a lost pod by recreating the gang, a frozen rank found and recovered.

    python bench/recovery.py
    python bench/recovery.py --checkpoint-interval 10 --progress-deadline 20

Starts its own control plane (cli/kubespeed_cli/dev) with two fake GPU nodes, the test
node agent of tests/e2e as their kubelet (pods run as local processes, each in its own
network namespace with the cluster's DNS), the CRD, the shipped RBAC and `kubespeed
operator` in the pods' network, as the e2e tests do. One job, 2 pods x 1 rank of the tiny
GPT over gloo on the CPU, checkpointing every --checkpoint-interval steps, with
runPolicy.progressDeadlineSeconds = --progress-deadline. In the same run, each time a few
steps past a checkpoint newer than the last recovery's:

1. in place: rank 1 is SIGKILLed; the pods' launchers restart both ranks in the same pods;
2. stall: rank 1 is SIGSTOPped; its step watchdog kills it and the ranks restart in place,
   while the operator, reading rank 0's step, sets Stalled;
3. gang: pod 1's container is SIGKILLed (its launcher, and with it its rank): a pod is lost,
   and the operator recreates the gang as a new attempt.

Prints one JSON line: for each, seconds from the signal to the first step trained after it
(and to the new ranks built, their `start` line, with the split: to the new rank 0 process,
then its start-up phases), and the steps lost (the last step trained
before it minus the checkpoint step the ranks resumed from); for the stall also seconds to
the Stalled condition; the in-place to gang speed-up; the settings it ran with, and the
machine's 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from agent import NodeAgent  # noqa: E402
from agent.images import chart_trainer_image  # noqa: E402
from training_helpers import (  # noqa: E402
    DATA_CLAIM,
    NodeNetworkOperator,
    Training,
    claim_volume,
    fill_data_claim,
    of_kind,
    rank_process,
    start,
)
from operator_fixture import JobClient, install_crd, install_operator_rbac, operator_kubeconfig  # noqa: E402

from kubespeed import wiring  # noqa: E402
from kubespeed_cli.dev.cluster import ControlPlane  # noqa: E402

NAMESPACE = "bench"
JOB = "recovery"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
# Steps past a fresh checkpoint before each signal, so a recovery has steps to lose.
STEPS_PAST_CHECKPOINT = 3


def wait(check: Callable[[], Any], what: str, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def resumed_after(lines: list[dict[str, Any]], since: float) -> dict[str, Any] | None:
    """Recovery from a signal at `since` (Unix time), once the ranks trained again: when the new ranks
    were built (their `start` line) and trained their first step, the checkpoint step resumed
    from, the last step trained before the signal."""
    started = next((i for i, line in enumerate(lines) if line["kind"] == "start" and line["time"] >= since), None)
    if started is None:
        return None
    before, after = lines[:started], lines[started:]
    trained, resumed = of_kind(after, "train"), of_kind(after, "resume")
    if not trained:
        return None
    last = of_kind(before, "train")[-1]["step"]
    back_to = resumed[0]["step"] if resumed else 0
    startup = of_kind(after, "startup")
    return {"start_time": after[0]["time"], "first_step_time": trained[0]["time"], "last_before": last, "resumed_from": back_to,
            "startup": startup[0] if startup else None}


def ready_to_break(training: Training, after_checkpoint: int, timeout: float) -> int:
    """Wait for a checkpoint newer than `after_checkpoint` and a few steps past it; returns its step."""
    saved = wait(lambda: [c["step"] for c in of_kind(training.metrics(), "checkpoint") if c["step"] > after_checkpoint],
                 f"a checkpoint after step {after_checkpoint}", timeout)[-1]  # fmt: skip
    training.wait_step(saved + STEPS_PAST_CHECKPOINT, timeout)
    return saved


def measure(training: Training, name: str, act: Callable[[], None], timeout: float,
            stalled: Callable[[], bool] | None = None) -> dict[str, Any]:  # fmt: skip
    at = time.time()
    act()
    figures: dict[str, Any] = {}
    if stalled is not None:
        wait(stalled, f"{name}: the Stalled condition", timeout, interval=0.1)
        figures["stalled_s"] = round(time.time() - at, 2)
    recovered = wait(lambda: resumed_after(training.metrics(), at), f"{name}: a step after the recovery", timeout)
    figures["to_start_s"] = round(recovered["start_time"] - at, 2)
    figures["to_next_step_s"] = round(recovered["first_step_time"] - at, 2)
    figures["steps_lost"] = recovered["last_before"] - recovered["resumed_from"]
    startup = recovered["startup"]
    if startup is not None:
        # Before the new rank 0 process existed: noticing the failure, stopping the ranks, the
        # rendezvous round, the spawn. After it: the rank's own start-up phases, to its first step.
        figures["split_s"] = {"to_rank_process": round(startup["processStart"] - at, 2), **startup["seconds"]}
    return figures


def is_stalled(jobs: JobClient) -> bool:
    condition = jobs.condition(JOB, "Stalled")
    return bool(condition and condition["status"] == "True")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-interval", type=int, default=10)
    parser.add_argument("--progress-deadline", type=int, default=20, help="runPolicy.progressDeadlineSeconds")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for each stage")
    args = parser.parse_args(argv)
    from kubernetes import client

    # Every figure here is mostly process start-up (Python, torch, DeepSpeed), which other load slows.
    load_before = os.getloadavg()[0]
    with ControlPlane() as cp, tempfile.TemporaryDirectory(prefix="kubespeed-bench-") as folder:
        nodes = cp.add_gpu_nodes(2)
        api = cp.api_client()
        install_crd(api)
        install_operator_rbac(cp)
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        wait(lambda: core.list_namespaced_service_account(NAMESPACE, field_selector="metadata.name=default").items,
             "the default ServiceAccount", 60)  # fmt: skip
        with NodeAgent(api, nodes, [chart_trainer_image()]) as agent:
            operator = NodeNetworkOperator(agent.network, operator_kubeconfig(cp, Path(folder)), Path(folder), identity="bench")
            operator.start()
            try:
                jobs = JobClient(cp, NAMESPACE)
                claim_volume(core, agent, NAMESPACE, DATA_CLAIM, "ReadOnlyMany")
                claim_volume(core, agent, NAMESPACE, wiring.checkpoint_claim_name(JOB), "ReadWriteMany")
                fill_data_claim(core, agent, NAMESPACE, SHAKESPEARE)
                training = Training(jobs, agent, operator, JOB)
                start(training, steps=1_000_000, checkpoint_interval=args.checkpoint_interval,
                      run_policy={"progressDeadlineSeconds": args.progress_deadline})  # fmt: skip

                def rank1() -> Any:
                    return rank_process(agent, JOB, node_rank=1, local_rank=0)

                saved = ready_to_break(training, 0, args.timeout)
                in_place = measure(training, "in place", lambda: rank1().kill(), args.timeout)
                saved = ready_to_break(training, saved, args.timeout)
                stall = measure(training, "stall", lambda: rank1().send_signal(signal.SIGSTOP), args.timeout,
                                stalled=lambda: is_stalled(jobs))  # fmt: skip
                saved = ready_to_break(training, saved, args.timeout)
                gang = measure(training, "gang", lambda: agent.signal_container(NAMESPACE, wiring.pod_name(JOB, 1), signal.SIGKILL),
                               args.timeout)  # fmt: skip
                status = jobs.status(JOB)
            finally:
                operator.stop()
        result = {
            "in_place_to_ranks_built_s": in_place["to_start_s"],
            "in_place_to_next_step_s": in_place["to_next_step_s"],
            "in_place_steps_lost": in_place["steps_lost"],
            "in_place_split_s": in_place.get("split_s"),
            "gang_to_ranks_built_s": gang["to_start_s"],
            "gang_to_next_step_s": gang["to_next_step_s"],
            "gang_steps_lost": gang["steps_lost"],
            "gang_split_s": gang.get("split_s"),
            "gang_over_in_place": round(gang["to_next_step_s"] / in_place["to_next_step_s"], 1),
            "frozen_to_stalled_s": stall["stalled_s"],
            "frozen_to_next_step_s": stall["to_next_step_s"],
            "frozen_steps_lost": stall["steps_lost"],
            "status": {key: status.get(key) for key in ("attempt", "restarts", "inPlaceRestarts")},
            "settings": {"nodes": 2, "procsPerNode": 1, "model": "gpt tiny", "backend": "gloo (CPU)",
                         "checkpointInterval": args.checkpoint_interval, "progressDeadlineSeconds": args.progress_deadline,
                         "cpus": os.cpu_count(), "loadAverage1m": [round(load_before, 1), round(os.getloadavg()[0], 1)]},  # fmt: skip
        }
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
