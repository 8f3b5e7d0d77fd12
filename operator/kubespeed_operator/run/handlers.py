"""Every kopf handler of the operator, and nothing else: settings, login, and routing job events.

The work lives elsewhere: `main.Operator` routes an event to the job's task,
`reconciler` reads, decides (`decide.lifecycle`) and applies, with the objects
of `build.children`; the pods are watched by the operator's own `podwatch`.
"""

from __future__ import annotations

from typing import Any

import kopf

from kubespeed import wiring
from kubespeed_operator.run import kube
from kubespeed_operator.run.settings import configure

JOBS = {"group": wiring.API_GROUP, "version": wiring.API_VERSION, "plural": wiring.PLURAL}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


@kopf.on.login()
async def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    # The same resolution as the operator's own client, whichever client libraries are installed.
    return kube.login(settings)


@kopf.on.event(**JOBS)
async def job_event(type: str | None, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.operator.job_deleted(dict(body))
        return
    memo.operator.job_seen(dict(body))
