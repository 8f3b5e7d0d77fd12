"""`kubespeed operator`: run the LMTrainingJob operator.

    kubespeed operator --all-namespaces            # cluster-wide (the chart's default)
    kubespeed operator --namespace team-a          # one namespace (a Role is enough)

It takes the Lease (leader election), lists the training pods (podwatch), then
starts kopf for the jobs; it serves /metrics and /healthz, and stops non-zero if
it loses the Lease, so its Deployment restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

import aiohttp
import kopf

from kubespeed import wiring
from kubespeed_operator.build import cluster
from kubespeed_operator.decide.lifecycle import Timing
from kubespeed_operator.run.health import DEFAULT_STALL_SECONDS, Health
from kubespeed_operator.run.jobs import Jobs
from kubespeed_operator.run.kube import Credentials, Kube, login
from kubespeed_operator.run.leader import Lease
from kubespeed_operator.run.metrics import OperatorMetrics
from kubespeed_operator.run.podwatch import PodWatch
from kubespeed_operator.run.reconciler import Reconciler
from kubespeed_operator.run.workers import BATCH_SECONDS, SETTLE_SECONDS, Workers

logger = logging.getLogger("kubespeed.operator")


class Operator:
    """What the kopf handlers reach through `memo.operator`, and the pod watch calls: route events to the jobs' tasks."""

    def __init__(self, reconciler: Reconciler, workers: Workers):
        self.reconciler = reconciler
        self.workers = workers

    def job_seen(self, job: dict[str, Any]) -> None:
        if self.reconciler.job_seen(job):
            self.workers.wake(job["metadata"]["namespace"], job["metadata"]["name"])

    def pod_seen(self, namespace: str, job: str, prompt: bool) -> None:
        # Pods of a job that is not live (deleted, going with it) wake nothing; the job's own event starts its task.
        if self.reconciler.pod_seen(namespace, job):
            self.workers.wake(namespace, job, within=SETTLE_SECONDS if prompt else BATCH_SECONDS)

    def job_deleted(self, job: dict[str, Any]) -> None:
        self.workers.forget(job["metadata"]["namespace"], job["metadata"]["name"])
        self.reconciler.job_gone(job)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubespeed operator", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE"),
                        help=f"namespace of the leader-election Lease (default: $POD_NAMESPACE, else the first --namespace, else {wiring.OPERATOR_NAMESPACE})")
    parser.add_argument("--lease-name", default="kubespeed-operator", help="name of the leader-election Lease")
    parser.add_argument("--lease-seconds", type=int, default=15, help="how long a silent leader keeps the Lease")
    parser.add_argument("--identity", default=f"{socket.gethostname()}-{os.getpid()}", help="this replica's name in the Lease")
    parser.add_argument("--metrics-port", type=int, default=wiring.OPERATOR_METRICS_PORT, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--health-port", type=int, default=wiring.OPERATOR_HEALTH_PORT, help="liveness /healthz port (0: off)")
    parser.add_argument("--progress-interval", type=float, default=Timing.progress_interval, help="seconds between reads of a job's rank 0 metrics")
    parser.add_argument("--resync", type=float, default=Timing.resync, help="seconds between timer reconciles of a quiet job")
    parser.add_argument("--stall-seconds", type=float, default=DEFAULT_STALL_SECONDS,
                        help="/healthz fails when the pod watch, or while jobs are live the reconciling, is silent this long")
    parser.add_argument("--startup-retry", type=float, default=Timing.startup_retry,
                        help="seconds before a gang that did not start within runPolicy.startupTimeoutSeconds is created again")
    cluster.add_flags(parser, os.environ.get("POD_NAMESPACE") or wiring.OPERATOR_NAMESPACE)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")
    args = parser.parse_args(argv)
    if args.lease_namespace is None:
        args.lease_namespace = args.namespace[0] if args.namespace else wiring.OPERATOR_NAMESPACE
    return args


async def run(args: argparse.Namespace, credentials: Credentials) -> int:
    import kubespeed_operator.run.handlers  # noqa: F401  (registers the handlers)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    jobs = Jobs()
    health = Health(args.stall_seconds)
    health.live_jobs = lambda: len(jobs)
    metrics = OperatorMetrics(jobs, health)
    async with Kube(credentials, on_request=metrics.count_request) as kube, aiohttp.ClientSession() as http:
        servers = await metrics.serve(args.metrics_port, args.health_port)
        lease = Lease(kube, args.lease_namespace, args.lease_name, args.identity, args.lease_seconds)
        acquiring = asyncio.create_task(lease.acquire())
        await asyncio.wait({acquiring, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            acquiring.cancel()
            return 0
        health.lead()
        timing = Timing(progress_interval=args.progress_interval, resync=args.resync, startup_retry=args.startup_retry)
        reconciler = Reconciler(kube, jobs, metrics, timing, args.identity, http, may_act=lease.held, cluster=cluster.from_flags(args))
        workers = Workers(reconciler.reconcile, on_error=metrics.reconcile_errors.inc, ready=reconciler.pods_first.wait_to_report)
        handler = Operator(reconciler, workers)
        pods = PodWatch(kube, args.namespace, on_change=handler.pod_seen, on_alive=health.watch_alive)
        reconciler.pods_of = pods.pods_of
        reconciler.probes_of = pods.probes_of
        reconciler.watch_version = pods.version
        watching = asyncio.create_task(pods.run())
        keeping = asyncio.create_task(lease.keep())
        stopping = asyncio.create_task(stop.wait())
        # No job is reconciled before every pod is known: a pod not yet listed would look missing.
        synced = asyncio.create_task(pods.synced.wait())
        await asyncio.wait({synced, keeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
        kopf_stop: asyncio.Future = loop.create_future()
        if synced.done():
            operator = asyncio.create_task(
                kopf.operator(
                    clusterwide=not args.namespace,
                    namespaces=args.namespace or [],
                    standalone=True,
                    memo=kopf.Memo(operator=handler),
                    stop_flag=kopf_stop,
                )
            )
            await asyncio.wait({operator, keeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not kopf_stop.done():
                kopf_stop.set_result(None)
            await asyncio.gather(operator, return_exceptions=True)
        lost = keeping.done()
        await workers.stop()
        await reconciler.close()
        for task in (watching, keeping, stopping, synced):
            task.cancel()
        if not lost:
            await lease.release()
        for server in servers:
            await server.cleanup()
        return 1 if lost else 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kopf logs every event at INFO; the operator's own lines say what matters.
    logging.getLogger("kopf").setLevel(logging.WARNING)
    try:
        credentials = Credentials(login)
    except kopf.LoginError as err:
        print(f"kubespeed operator: no cluster credentials (in-cluster or kubeconfig): {err}", file=sys.stderr)
        return 2
    return asyncio.run(run(args, credentials))
