"""The NetworkPolicy `<job>`: a job's pods talk to each other and to the operator's scraper only.

Rendezvous is not one port: torch.distributed's gloo and NCCL open further
connections between ranks on ephemeral ports, so every TCP port is open between
pods of the same job. From outside the job, only pods labelled as the kubespeed
operator reach the metrics port, in any namespace (the builders do not know where
the operator runs, and the metrics carry no secrets). Egress is left open.
"""

from __future__ import annotations

from typing import Any

from kubespeed import wiring
from kubespeed_operator.build.meta import child_metadata, job_selector, labels

OPERATOR_POD_SELECTOR = {wiring.NAME_LABEL: wiring.APP_NAME, wiring.COMPONENT_LABEL: wiring.OPERATOR_COMPONENT}


def network_policy(job: dict[str, Any]) -> dict[str, Any]:
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
                {
                    "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": dict(OPERATOR_POD_SELECTOR)}}],
                    "ports": [{"protocol": "TCP", "port": wiring.METRICS_PORT}],
                },
            ],
        },
    }
