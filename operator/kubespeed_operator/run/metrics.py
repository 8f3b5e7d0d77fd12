"""The operator's own Prometheus metrics and its liveness endpoint.

    curl localhost:8080/metrics   # jobs by phase, reconcile durations, gang and in-place restarts, API requests, leader
    curl localhost:8081/healthz   # 200 while the operator does its work (health.py), else 503 and why
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubespeed.spec.status import PHASES
from kubespeed_operator.run.health import Health
from kubespeed_operator.run.jobs import Jobs

# The phase label of a job that has no status yet.
NEW = "New"


class _JobsByPhase(Collector):
    """`kubespeed_operator_jobs{phase}`, counted from the registry of live jobs when scraped."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kubespeed_operator_jobs", "LMTrainingJobs by phase.", labels=["phase"])
        counts = {phase: 0 for phase in (NEW, *PHASES)}
        for phase in self.jobs.phases():
            label = phase or NEW
            counts[label] = counts.get(label, 0) + 1
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


class OperatorMetrics:
    """What the operator measures of itself; it observes the running part and steers nothing."""

    def __init__(self, jobs: Jobs, health: Health) -> None:
        self.health = health
        self.registry = CollectorRegistry()
        self.registry.register(_JobsByPhase(jobs))
        self.reconcile_seconds = Histogram(
            "kubespeed_operator_reconcile_duration_seconds", "Time to reconcile one job.", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.restarts = Counter("kubespeed_operator_gang_restarts", "Gang restarts started.", registry=self.registry)
        self.in_place_restarts = Counter("kubespeed_operator_in_place_restarts", "In-place restarts of ranks seen.", registry=self.registry)
        self.api_requests = Counter(
            "kubespeed_operator_api_requests", "Requests to the API server by verb and HTTP code.", ["verb", "code"], registry=self.registry
        )
        self.reconcile_errors = Counter("kubespeed_operator_reconcile_errors", "Reconciles that failed and were retried.", registry=self.registry)
        self.leader = Gauge("kubespeed_operator_leader", "1 on the replica that holds the Lease and acts, 0 on a standby.", registry=self.registry)
        self.leader.set_function(lambda: float(health.leading))

    def count_request(self, verb: str, code: int) -> None:
        self.api_requests.labels(verb, str(code)).inc()

    async def serve(self, metrics_port: int, health_port: int, host: str = "0.0.0.0") -> list[web.AppRunner]:
        """Start /metrics and /healthz (each on its port; 0 leaves it off)."""

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

        async def healthz(_: web.Request) -> web.Response:
            problems = self.health.problems()
            if problems:
                return web.Response(status=503, text="".join(f"unhealthy: {p}\n" for p in problems))
            return web.Response(text="ok\n" if self.health.leading else "ok: standing by for the Lease\n")

        runners = []
        for port, route, handler in ((metrics_port, "/metrics", metrics), (health_port, "/healthz", healthz)):
            if not port:
                continue
            app = web.Application()
            app.router.add_get(route, handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            runners.append(runner)
        return runners
