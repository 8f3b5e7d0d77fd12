"""Hooks for gang schedulers and queues: the PodGroup, and what pods carry to join it.

Two PodGroup APIs are supported, chosen by `spec.scheduling.gang.apiVersion`:
scheduler-plugins' coscheduling (`scheduling.x-k8s.io`, pods join by label) and
Volcano (`scheduling.volcano.sh`, pods join by annotation).

A Kueue queue makes each attempt's pods one Kueue plain pod group: Kueue gates them
until its ClusterQueue has quota for all of them, so the whole gang is admitted or none
of it. The group is per attempt and marked not retriable in place, because the operator
owns retries: Kueue would otherwise hold a failed or preempted pod (by its finalizer)
until a replacement joined the same group, while the operator creates the next
attempt's pods, which carry the same names, only once the old ones are gone.
"""

from __future__ import annotations

from typing import Any

from kubespeed.spec import LMTrainingJobSpec
from kubespeed_operator.build.meta import child_metadata, labels

SCHEDULER_PLUGINS_API = "scheduling.x-k8s.io/v1alpha1"
SCHEDULER_PLUGINS_POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
VOLCANO_POD_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_POD_GROUP_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_RETRIABLE_ANNOTATION = "kueue.x-k8s.io/retriable-in-group"
# The scheduling gate Kueue's pod webhook puts on a queued pod and lifts at admission.
KUEUE_ADMISSION_GATE = "kueue.x-k8s.io/admission"


def kueue_pod_group(job_name: str, attempt: int) -> str:
    """The Kueue pod group (and so Workload) name of one attempt: `<job>-<attempt>`."""
    return f"{job_name}-{attempt}"


def pod_group(job: dict[str, Any], spec: LMTrainingJobSpec) -> dict[str, Any] | None:
    """The PodGroup `<job>` with minMember = nodes, when `spec.scheduling.gang.enabled`."""
    gang = spec.scheduling.gang
    if not gang.enabled:
        return None
    name = job["metadata"]["name"]
    group_spec: dict[str, Any] = {"minMember": spec.nodes}
    if gang.apiVersion == SCHEDULER_PLUGINS_API:
        group_spec["scheduleTimeoutSeconds"] = gang.scheduleTimeoutSeconds
    elif spec.scheduling.priorityClassName:
        group_spec["priorityClassName"] = spec.scheduling.priorityClassName
    return {
        "apiVersion": gang.apiVersion,
        "kind": "PodGroup",
        "metadata": child_metadata(job, name, labels(name)),
        "spec": group_spec,
    }


def gang_labels(job_name: str, spec: LMTrainingJobSpec, attempt: int) -> dict[str, str]:
    """Labels that put a pod into the job's PodGroup and Kueue queue."""
    result: dict[str, str] = {}
    if spec.scheduling.gang.enabled and spec.scheduling.gang.apiVersion == SCHEDULER_PLUGINS_API:
        result[SCHEDULER_PLUGINS_POD_GROUP_LABEL] = job_name
    if spec.scheduling.queue:
        result[KUEUE_QUEUE_LABEL] = spec.scheduling.queue
        result[KUEUE_POD_GROUP_LABEL] = kueue_pod_group(job_name, attempt)
    return result


def gang_annotations(job_name: str, spec: LMTrainingJobSpec) -> dict[str, str]:
    result: dict[str, str] = {}
    if spec.scheduling.gang.enabled and spec.scheduling.gang.apiVersion != SCHEDULER_PLUGINS_API:
        result[VOLCANO_POD_GROUP_ANNOTATION] = job_name
    if spec.scheduling.queue:
        result[KUEUE_POD_GROUP_COUNT_ANNOTATION] = str(spec.nodes)
        result[KUEUE_RETRIABLE_ANNOTATION] = "false"
    return result
