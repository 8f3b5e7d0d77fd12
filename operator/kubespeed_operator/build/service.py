"""The headless Service `<job>`: gives pod `<job>-<i>` the DNS name `<job>-<i>.<job>`."""

from __future__ import annotations

from typing import Any

from kubespeed import wiring
from kubespeed_operator.build.meta import child_metadata, job_selector, labels


def headless_service(job: dict[str, Any]) -> dict[str, Any]:
    name = job["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(job, name, labels(name)),
        "spec": {
            "clusterIP": "None",
            # Ranks resolve each other while still starting up, before any pod is
            # Ready (training pods have no readiness probe to pass).
            "publishNotReadyAddresses": True,
            "selector": job_selector(name),
            "ports": [
                {"name": "rendezvous", "port": wiring.MASTER_PORT, "targetPort": wiring.MASTER_PORT, "protocol": "TCP"},
                {"name": "metrics", "port": wiring.METRICS_PORT, "targetPort": wiring.METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }
