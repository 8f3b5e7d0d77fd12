"""Every kopf handler of the operator, and nothing else: they wake the job's reconcile task.

The work lives elsewhere: `reconciler` (read, decide, apply), `lifecycle` (the
decision), `children` (the objects), `podwatch` (the pods, which the operator
watches itself). Handlers only route events to jobs.
"""

from __future__ import annotations

from typing import Any

import kopf

from kubespeed import wiring
from kubespeed_operator.run.settings import configure

JOBS = {"group": wiring.API_GROUP, "version": wiring.API_VERSION, "plural": wiring.PLURAL}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


@kopf.on.event(**JOBS)
async def job_event(type: str | None, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.operator.forget(namespace, name)
        return
    memo.operator.job_seen(dict(body))
