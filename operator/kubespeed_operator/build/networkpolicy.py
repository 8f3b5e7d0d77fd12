"""The NetworkPolicy `<job>`: a job's pods talk to each other; their metrics port to the operator and the cluster's scrapers only.

Rendezvous is not one port: torch.distributed's gloo and NCCL open further
connections between ranks on ephemeral ports, so every TCP port is open between
pods of the same job. From outside the job, only the metrics port is open, and
only to the operator's pods in the operator's own namespace (a namespace is
selected by the name label the API server sets, which no one can claim for
another) and to the pods `Cluster.metrics_scrapers` names (Prometheus, in the
chart's `metrics.trainers.scrapers`). Egress is left open.
"""

from __future__ import annotations

from typing import Any

from kubespeed import wiring
from kubespeed_operator.build.cluster import Cluster, namespace_selector
from kubespeed_operator.build.meta import child_metadata, job_selector, labels

OPERATOR_POD_SELECTOR = {wiring.NAME_LABEL: wiring.APP_NAME, wiring.COMPONENT_LABEL: wiring.OPERATOR_COMPONENT}


def metrics_peers(cluster: Cluster) -> list[dict[str, Any]]:
    """Who may read the metrics port: the operator, then each scraper, each in its own namespace only."""
    peers = [{"namespaceSelector": namespace_selector(cluster.operator_namespace), "podSelector": {"matchLabels": dict(OPERATOR_POD_SELECTOR)}}]
    for scraper in cluster.metrics_scrapers:
        peers.append({"namespaceSelector": namespace_selector(scraper.namespace), "podSelector": {"matchLabels": dict(scraper.pod_labels)}})
    return peers


def network_policy(job: dict[str, Any], cluster: Cluster = Cluster()) -> dict[str, Any]:
    name = job["metadata"]["name"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(job, name, labels(name)),
        "spec": {
            "podSelector": {"matchLabels": job_selector(name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": job_selector(name)}}],
                    "ports": [{"protocol": "TCP"}],
                },
                {"from": metrics_peers(cluster), "ports": [{"protocol": "TCP", "port": wiring.METRICS_PORT}]},
            ],
        },
    }
