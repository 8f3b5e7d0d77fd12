"""Everything an LMTrainingJob owns, built from the job alone: THE builders.

The operator creates exactly what these return and `kubespeed render` prints it,
so the two cannot drift; `cluster` is what both know of the cluster besides the job. `job` is the whole LMTrainingJob object as a dict
(metadata name/namespace/uid, spec); the spec is parsed and defaulted here.

- `job_children(job)`: what lives as long as the job: headless Service, ConfigMap,
  NetworkPolicy, the checkpoint claim and the PodGroup when asked for.
- `attempt_pods(job, attempt)`: the gang of training pods of one attempt.
"""

from __future__ import annotations

from typing import Any

from kubespeed.spec import LMTrainingJobSpec, parse_job_spec
from kubespeed_operator.build.cluster import Cluster
from kubespeed_operator.build.configmap import config_map
from kubespeed_operator.build.meta import labels, owner_reference
from kubespeed_operator.build.networkpolicy import network_policy
from kubespeed_operator.build.podgroup import pod_group
from kubespeed_operator.build.pods import training_pod
from kubespeed_operator.build.service import headless_service
from kubespeed_operator.build.volumes import checkpoint_claim

__all__ = ["Cluster", "attempt_pods", "job_children", "job_spec", "labels", "owner_reference"]


def job_spec(job: dict[str, Any]) -> LMTrainingJobSpec:
    """The job's spec, parsed and defaulted; SpecError names the field."""
    return parse_job_spec(job.get("spec") or {})


def job_children(job: dict[str, Any], spec: LMTrainingJobSpec | None = None, cluster: Cluster = Cluster()) -> list[dict[str, Any]]:
    """Objects that live for the whole job, in the order they are created (`spec`: the job's, parsed already)."""
    spec = spec or job_spec(job)
    optional = [checkpoint_claim(job, spec), pod_group(job, spec)]
    return [
        headless_service(job),
        config_map(job, spec),
        network_policy(job, cluster),
        *[obj for obj in optional if obj is not None],
    ]


def attempt_pods(job: dict[str, Any], attempt: int, spec: LMTrainingJobSpec | None = None, cluster: Cluster = Cluster()) -> list[dict[str, Any]]:
    """Pods `<job>-0` .. `<job>-<nodes-1>` of one attempt (attempts count from 1; `spec`: the job's, parsed already)."""
    if attempt < 1:
        raise ValueError(f"attempts count from 1, got {attempt}")
    spec = spec or job_spec(job)
    return [training_pod(job, spec, rank, attempt, cluster) for rank in range(spec.nodes)]
