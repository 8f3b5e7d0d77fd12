"""Capacity probes `<job>-probe-<i>`: what elastic mode keeps pending for the nodes a shrunk gang lacks.

A probe is a training pod with everything that decides where it may run (resources
of every container, nodeSelector, affinity, tolerations, runtime class, priority,
scheduler name, volumes) and nothing that trains: the kube-scheduler judges whether a
worker would fit, so no part of it is re-implemented here. Its labels name the job and
its index but no node rank or attempt, so it is never counted as a gang member, and it
joins no PodGroup or Kueue workload (it must not hold a gang's place or quota). Once
placed it sleeps, holding the node, until the operator deletes it and grows the gang.
"""

from __future__ import annotations

from typing import Any

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec
from kubespeed_operator.build.cluster import Cluster
from kubespeed_operator.build.meta import child_metadata, labels
from kubespeed_operator.build.podgroup import (
    KUEUE_POD_GROUP_COUNT_ANNOTATION,
    KUEUE_POD_GROUP_LABEL,
    KUEUE_QUEUE_LABEL,
    KUEUE_RETRIABLE_ANNOTATION,
    SCHEDULER_PLUGINS_POD_GROUP_LABEL,
    VOLCANO_POD_GROUP_ANNOTATION,
)
from kubespeed_operator.build.pods import training_pod

# Waits without a GPU or a file; any image with coreutils has it.
PROBE_COMMAND = ["sleep", "infinity"]
# What a worker has for the gang's sake and a probe must not: the gang's names and the hooks of gang schedulers and queues.
_GANG_LABELS = (wiring.NODE_RANK_LABEL, wiring.ATTEMPT_LABEL, wiring.COMPONENT_LABEL, SCHEDULER_PLUGINS_POD_GROUP_LABEL,
                KUEUE_QUEUE_LABEL, KUEUE_POD_GROUP_LABEL)  # fmt: skip
_GANG_ANNOTATIONS = (VOLCANO_POD_GROUP_ANNOTATION, KUEUE_POD_GROUP_COUNT_ANNOTATION, KUEUE_RETRIABLE_ANNOTATION,
                     "kubectl.kubernetes.io/default-container")  # fmt: skip
_POD_ONLY = ("hostname", "subdomain", "initContainers", "schedulingGates")


def _probe_container(container: dict[str, Any]) -> dict[str, Any]:
    kept = {k: container[k] for k in ("name", "image", "imagePullPolicy", "resources", "securityContext") if k in container}
    return {**kept, "command": list(PROBE_COMMAND)}


def capacity_probe(job: dict[str, Any], spec: LMTrainingJobSpec, index: int, cluster: Cluster = Cluster()) -> dict[str, Any]:
    """Probe `<job>-probe-<index>`, scheduled as a worker of the gang would be."""
    worker = training_pod(job, spec, 0, 1, cluster)
    job_name = job["metadata"]["name"]
    own = {k: v for k, v in worker["metadata"]["labels"].items() if k not in _GANG_LABELS}
    metadata = child_metadata(job, wiring.probe_name(job_name, index), {
        **own, **labels(job_name), wiring.PROBE_LABEL: str(index), wiring.COMPONENT_LABEL: wiring.PROBE_COMPONENT})  # fmt: skip
    annotations = {k: v for k, v in (worker["metadata"].get("annotations") or {}).items() if k not in _GANG_ANNOTATIONS}
    if annotations:
        metadata["annotations"] = annotations
    pod_spec = {k: v for k, v in worker["spec"].items() if k not in _POD_ONLY}
    pod_spec["containers"] = [_probe_container(c) for c in worker["spec"]["containers"]]
    # It saves nothing: deleting it frees the node for the grown gang at once.
    pod_spec["terminationGracePeriodSeconds"] = 0
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
