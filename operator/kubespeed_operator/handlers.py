"""Every kopf handler of the operator, and nothing else: they wake the job's reconcile task.

The work lives elsewhere: `reconciler` (read, decide, apply), `lifecycle` (the
decision), `children` (the objects). Handlers only route events to jobs.
"""

from __future__ import annotations

from typing import Any

import kopf

from kubespeed import wiring
from kubespeed_operator.observed import PodView, view
from kubespeed_operator.settings import configure

JOBS = {"group": wiring.API_GROUP, "version": wiring.API_VERSION, "plural": wiring.PLURAL}
TRAINING_PODS = {"labels": {wiring.MANAGED_BY_LABEL: wiring.MANAGED_BY, wiring.NODE_RANK_LABEL: kopf.PRESENT}}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


@kopf.index("v1", "pods", **TRAINING_PODS)
async def training_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[tuple[str, str], PodView] | None:
    """(namespace, job) -> the job's pods, as the watch last showed them."""
    seen = view(dict(body))
    if seen is None or wiring.JOB_LABEL not in labels:
        return None
    return {(namespace, labels[wiring.JOB_LABEL]): seen}


@kopf.on.event(**JOBS)
async def job_event(type: str | None, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, training_pods: kopf.Index, **_: Any) -> None:
    if type == "DELETED":
        memo.operator.forget(namespace, name)
        return
    memo.operator.job_seen(dict(body), training_pods)


@kopf.on.event("v1", "pods", **TRAINING_PODS)
async def pod_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, training_pods: kopf.Index, **_: Any) -> None:
    if wiring.JOB_LABEL in labels:
        memo.operator.pod_seen(namespace, labels[wiring.JOB_LABEL], training_pods)
