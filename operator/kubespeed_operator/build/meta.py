"""Names, labels and owner references shared by every object a job owns."""

from __future__ import annotations

from typing import Any

from kubespeed import wiring


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    """The reference that makes the job the controller of a child: deleting the job deletes it."""
    meta = job["metadata"]
    return {
        "apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}",
        "kind": wiring.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(job_name: str, *, node_rank: int | None = None, attempt: int | None = None) -> dict[str, str]:
    """Labels of a child: the job always; node rank and attempt on training pods."""
    result = {wiring.JOB_LABEL: job_name, wiring.MANAGED_BY_LABEL: wiring.MANAGED_BY}
    if node_rank is not None:
        result[wiring.NODE_RANK_LABEL] = str(node_rank)
        result[wiring.COMPONENT_LABEL] = wiring.TRAINER_COMPONENT
    if attempt is not None:
        result[wiring.ATTEMPT_LABEL] = str(attempt)
    return result


def job_selector(job_name: str) -> dict[str, str]:
    """Selects every pod of the job, whatever its node rank or attempt."""
    return {wiring.JOB_LABEL: job_name}


def child_metadata(job: dict[str, Any], name: str, child_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job["metadata"]["namespace"],
        "labels": child_labels,
        "ownerReferences": [owner_reference(job)],
    }
