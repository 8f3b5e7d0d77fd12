"""How the operator scales: N jobs of M nodes created at once on a real control plane, then deleted.

    python bench/operator_scale.py                          # 200 jobs x 4 nodes
    python bench/operator_scale.py --jobs 1000 --nodes 8
    python bench/operator_scale.py --gc-qps 200             # the garbage collector faster than its default 20/s

Starts its own control plane (cli/kubespeed_cli/dev) with fake GPU nodes (100 pods
each), installs the CRD and the shipped RBAC, runs `kubespeed operator` as a
subprocess under its ServiceAccount, and plays the kubelet: every pod bound to a node
is reported Running. The jobs ask for 100m CPU and 256Mi per pod, so that 100 fit a
fake node (the per-rank defaults would fill one with 64). Prints one JSON line: the
settings and the machine's load average, time until every pod exists (and per job
p50/p99), time until every job is Running, the operator's API requests per job and
its error responses, its CPU per pod created, its memory (after the warm-up, at its
peak, and the growth per job), CPU by process; then for deleting the jobs: when
every pod was gone, when every other child (Service, ConfigMap, NetworkPolicy) was,
and the rate at which those went; and when every pod was being deleted (the
operator's deletes, or the garbage collector's, had reached it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from kubespeed import wiring  # noqa: E402
from kubespeed_cli.dev.cluster import ControlPlane  # noqa: E402
from kubelet import FakeKubelet, follow  # noqa: E402
from operator_fixture import OperatorProcess, install_crd, install_operator_rbac, job_manifest, operator_kubeconfig, shared_checkpoint_claim  # noqa: E402

PODS_PER_FAKE_NODE = 100
TIMERS_SECONDS = 3600
NAMESPACE = "bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def requests_by_code(metrics: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        match = re.match(r'kubespeed_operator_api_requests_total\{code="(\d+)",verb="(\w+)"\} (\S+)', line)
        if match:
            counts[f"{match.group(2)} {match.group(1)}"] = counts.get(f"{match.group(2)} {match.group(1)}", 0) + float(match.group(3))
    return counts


def by_verb(counts: dict[str, float], jobs: int) -> dict[str, float]:
    """Requests a job by verb, from counts by "VERB code"."""
    verbs: dict[str, float] = {}
    for key, value in counts.items():
        verbs[key.split()[0]] = verbs.get(key.split()[0], 0) + value
    return {verb: round(value / jobs, 2) for verb, value in sorted(verbs.items()) if value}


def reconciles(metrics: str) -> float:
    match = re.search(r"^kubespeed_operator_reconcile_duration_seconds_count (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (utime and stime in /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(cp: ControlPlane, operator_pid: int) -> dict[str, float]:
    """Where the machine's cores go: each control-plane process, the operator, and this benchmark."""
    pids = {process.name: process.pid for process in cp.processes}
    pids["operator"] = operator_pid
    pids["benchmark"] = os.getpid()
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """A process's memory from /proc/PID/status: VmHWM (peak resident) or VmRSS (resident now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# What one pod of a benchmark job asks for (see the module docstring).
BENCH_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}}
CHILD_KINDS = ("services", "configmaps", "networkpolicies")


def count(core: Any, networking: Any, kind: str) -> int:
    """How many objects of `kind` the namespace holds: a list of one, and the API server's count of
    the rest (which it gives only for a list without a selector, so the namespace's own objects count too)."""
    lister = {"pods": core.list_namespaced_pod, "services": core.list_namespaced_service,
              "configmaps": core.list_namespaced_config_map, "networkpolicies": networking.list_namespaced_network_policy}[kind]  # fmt: skip
    page = lister(NAMESPACE, limit=1)
    return len(page.items) + (page.metadata.remaining_item_count or 0)


class Observer:
    """Watches pods and jobs as admin: when each job's pods all exist, when each job is Running;
    reports every bound pod Running (the kubelet's part)."""

    def __init__(self, control_plane: ControlPlane, kubelet: FakeKubelet, nodes: int):
        from kubernetes import client

        self.core = client.CoreV1Api(control_plane.api_client())
        self.custom = client.CustomObjectsApi(control_plane.api_client())
        self.kubelet = kubelet
        self.nodes = nodes
        self.pods_seen: dict[str, set[str]] = {}
        self.all_pods_at: dict[str, float] = {}
        self.running_at: dict[str, float] = {}
        # Pod UID -> when the pod was first seen being deleted (a deletionTimestamp) or gone.
        self.terminating_at: dict[str, float] = {}
        self.started: set[str] = set()
        self.pool = ThreadPoolExecutor(8)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._watch_pods, daemon=True), threading.Thread(target=self._watch_jobs, daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _watch_pods(self) -> None:
        follow(self.core.list_namespaced_pod, self._on_pod, self.stop, NAMESPACE)

    def _watch_jobs(self) -> None:
        follow(self.custom.list_namespaced_custom_object, self._on_job, self.stop, wiring.API_GROUP, wiring.API_VERSION, NAMESPACE, wiring.PLURAL)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        job = (meta.get("labels") or {}).get(wiring.JOB_LABEL)
        if job is not None and (kind == "DELETED" or meta.get("deletionTimestamp")):
            self.terminating_at.setdefault(meta["uid"], time.monotonic())
        if kind == "DELETED" or job is None:
            return
        seen = self.pods_seen.setdefault(job, set())
        seen.add(meta["name"])
        if len(seen) == self.nodes and job not in self.all_pods_at:
            self.all_pods_at[job] = time.monotonic()
        bound = (pod.get("spec") or {}).get("nodeName")
        pending = (pod.get("status") or {}).get("phase") == "Pending"
        if bound and pending and meta["uid"] not in self.started and not meta.get("deletionTimestamp"):
            self.started.add(meta["uid"])
            self.pool.submit(self._run_pod, meta["name"])

    def _run_pod(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        for _ in range(20):
            try:
                self.kubelet.run(NAMESPACE, name)
                return
            except Exception as error:  # noqa: BLE001  a busy API server: try again
                if isinstance(error, ApiException) and error.status == 404:
                    return
                time.sleep(0.5)

    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        if (job.get("status") or {}).get("phase") == "Running":
            self.running_at.setdefault(job["metadata"]["name"], time.monotonic())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=4, help="pods per job")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--gc-qps", type=int, default=None, help="kube-controller-manager's --kube-api-qps (default: its own, 20)")
    args = parser.parse_args(argv)
    from kubernetes import client

    flags = {"kube-controller-manager": [f"--kube-api-qps={args.gc_qps}", f"--kube-api-burst={2 * args.gc_qps}"]} if args.gc_qps else {}
    load_before = os.getloadavg()[0]
    with ControlPlane(extra_flags=flags) as cp, tempfile.TemporaryDirectory(prefix="kubespeed-bench-") as folder:
        total_pods = args.jobs * args.nodes
        cp.add_gpu_nodes(math.ceil(total_pods / PODS_PER_FAKE_NODE), gpus=PODS_PER_FAKE_NODE)
        install_crd(cp.api_client())
        install_operator_rbac(cp)
        core = client.CoreV1Api(cp.api_client())
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        shared_checkpoint_claim(core, NAMESPACE)
        while True:
            try:
                core.read_namespaced_service_account("default", NAMESPACE)
                break
            except client.exceptions.ApiException:
                time.sleep(0.2)
        # The operator's timers (a running job's metrics read, the resync) longer than the benchmark: the
        # figures are the cost of creating and deleting. A job that ran for minutes meanwhile would add
        # its timed reconciles (at 1,000 x 8 with 60 s reads: 2.6 a job, a third of all), which are the
        # cost of running jobs, not of creating them, and which a run of 200 jobs (15 s) never had.
        timers = ["--resync", str(TIMERS_SECONDS), "--progress-interval", str(TIMERS_SECONDS)]
        operator = OperatorProcess(operator_kubeconfig(cp, Path(folder)), Path(folder), extra_args=timers)
        operator.start()
        kubelet = FakeKubelet(cp.api_client()).start()
        observer = Observer(cp, kubelet, args.nodes)
        observer.start()
        custom = client.CustomObjectsApi(cp.api_client())
        networking = client.NetworkingV1Api(cp.api_client())
        # The namespace's own objects (its kube-root-ca.crt ConfigMap), which outlive the jobs.
        own = {kind: count(core, networking, kind) for kind in ("pods", *CHILD_KINDS)}
        # One job through Running and deleted first, so the figures measure the operator at
        # work, not the API server still initialising the new CRD's storage, nor the garbage
        # collector before it watches the new kind (it looks for new kinds every 30 s and
        # until then leaves a deleted job's children alone, as in no cluster whose CRD is older).
        custom.create_namespaced_custom_object(wiring.API_GROUP, wiring.API_VERSION, NAMESPACE, wiring.PLURAL, job_manifest(
            "warmup", nodes=1, resources=BENCH_RESOURCES, training={"steps": 10, "globalBatchSize": 4, "microBatchSize": 4}))
        while "warmup" not in observer.running_at:
            time.sleep(0.2)
        custom.delete_namespaced_custom_object(wiring.API_GROUP, wiring.API_VERSION, NAMESPACE, wiring.PLURAL, "warmup")
        while any(count(core, networking, kind) != own[kind] for kind in ("pods", *CHILD_KINDS)):
            time.sleep(0.5)
        observer.running_at.pop("warmup")
        observer.terminating_at.clear()
        names = [f"job-{i:04d}" for i in range(args.jobs)]
        created_at: dict[str, float] = {}
        before_metrics = operator.metrics()
        before = requests_by_code(before_metrics)
        cpu_before = cpu_by_process(cp, operator.process.pid)
        rss_before = memory_mb(operator.process.pid, "VmRSS")

        def create(name: str) -> None:
            manifest = job_manifest(name, nodes=args.nodes, resources=BENCH_RESOURCES,
                                    training={"steps": 10, "globalBatchSize": 4 * args.nodes, "microBatchSize": 4})
            created_at[name] = time.monotonic()
            custom.create_namespaced_custom_object(wiring.API_GROUP, wiring.API_VERSION, NAMESPACE, wiring.PLURAL, manifest)

        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, names))
        deadline = t0 + args.timeout
        while time.monotonic() < deadline and (len(observer.all_pods_at) < args.jobs or len(observer.running_at) < args.jobs):
            time.sleep(0.2)
        per_job = [observer.all_pods_at[n] - created_at[n] for n in names if n in observer.all_pods_at]
        created_metrics = operator.metrics()
        create_requests = requests_by_code(created_metrics)
        create_delta = {k: v - before.get(k, 0) for k, v in create_requests.items()}
        cpu_created = cpu_by_process(cp, operator.process.pid)
        rss_created = memory_mb(operator.process.pid, "VmRSS")

        children = sum(count(core, networking, kind) - own[kind] for kind in CHILD_KINDS)
        t1 = time.monotonic()
        # As `kubectl delete`: background propagation, the jobs go at once and their dependents after.
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: custom.delete_namespaced_custom_object(wiring.API_GROUP, wiring.API_VERSION, NAMESPACE, wiring.PLURAL, n), names))
        deleted_calls_s = time.monotonic() - t1
        pods_gone_s = children_gone_s = None
        while time.monotonic() < t1 + args.timeout and children_gone_s is None:
            if pods_gone_s is None and count(core, networking, "pods") == own["pods"]:
                pods_gone_s = time.monotonic() - t1
            if pods_gone_s is not None and all(count(core, networking, kind) == own[kind] for kind in CHILD_KINDS):
                children_gone_s = time.monotonic() - t1
            time.sleep(0.5)
        deleted_s = time.monotonic() - t1
        delete_requests = requests_by_code(operator.metrics())
        delete_delta = {k: v - create_requests.get(k, 0) for k, v in delete_requests.items()}
        cpu_deleted = cpu_by_process(cp, operator.process.pid)
        rss = memory_mb(operator.process.pid)
        observer.stop.set()
        kubelet.stop()
        operator.stop()

        def errors(counts: dict[str, float]) -> dict[str, float]:
            return {k: v for k, v in counts.items() if int(k.split()[1]) >= 400 and v}

        cpu_create = {k: round(v - cpu_before[k], 1) for k, v in cpu_created.items()}
        result = {
            "jobs": args.jobs,
            "nodes_per_job": args.nodes,
            "gc_kube_api_qps": args.gc_qps or 20,
            "operator_timers_s": TIMERS_SECONDS,
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
            "create_calls_s": round(max(created_at.values()) - t0, 2),
            "all_pods_exist_s": round(max(observer.all_pods_at.values()) - t0, 2) if len(per_job) == args.jobs else None,
            "pods_exist_per_job_p50_s": round(statistics.median(per_job), 2) if per_job else None,
            "pods_exist_per_job_p99_s": round(percentile(per_job, 0.99), 2) if per_job else None,
            "all_jobs_running_s": round(max(observer.running_at.values()) - t0, 2) if len(observer.running_at) == args.jobs else None,
            "jobs_running": len(observer.running_at),
            "api_requests_per_job_create": round(sum(create_delta.values()) / args.jobs, 1),
            "api_requests_per_job_create_by_verb": by_verb(create_delta, args.jobs),
            "reconciles_per_job_create": round((reconciles(created_metrics) - reconciles(before_metrics)) / args.jobs, 1),
            "api_errors_create": errors(create_delta),
            "delete_calls_s": round(deleted_calls_s, 2),
            "delete_pods_terminating_s": round(max(observer.terminating_at.values()) - t1, 2) if len(observer.terminating_at) == total_pods else None,
            "delete_pods_gone_s": round(pods_gone_s, 2) if pods_gone_s is not None else None,
            "delete_all_gone_s": round(children_gone_s, 2) if children_gone_s is not None else None,
            "delete_children": children,
            "delete_children_per_s": round(children / children_gone_s, 1) if children_gone_s else None,
            "delete_all_s": round(deleted_s, 2),
            "api_requests_per_job_delete": round(sum(delete_delta.values()) / args.jobs, 1),
            "api_errors_delete": errors(delete_delta),
            "operator_cpu_ms_per_pod_create": round(1000 * (cpu_created["operator"] - cpu_before["operator"]) / total_pods, 2),
            "operator_rss_after_warmup_mb": round(rss_before, 1),
            "operator_rss_created_mb": round(rss_created, 1),
            "operator_rss_kb_per_job": round(1024 * (rss_created - rss_before) / args.jobs, 1),
            "operator_peak_rss_mb": round(rss, 1),
            "cpu_s_create": cpu_create,
            "cpu_s_delete": {k: round(v - cpu_created[k], 1) for k, v in cpu_deleted.items()},
            "operator_log_tracebacks": operator.log().count("Traceback"),
        }
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
