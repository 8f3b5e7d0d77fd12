"""Creating what a decision asks for: the job's children, then the attempt's missing pods.

Every create is idempotent (409 is "already there"), so a pass that repeats one
after a crash is harmless. A refused create becomes a `Blocker` for `decide`:
the job waits and retries, or fails when the API says the object is invalid.
A claim seen to exist is trusted for CLAIM_SEEN_SECONDS, since many jobs share
one (one GET per claim instead of one per job: 200 GETs at 200 jobs x 4 pods).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec
from kubespeed.spec.status import Reason
from kubespeed_operator.build.children import attempt_pods, job_children
from kubespeed_operator.decide.lifecycle import Blocker
from kubespeed_operator.decide.observed import PodView, view
from kubespeed_operator.run.kube import ApiError, Kube, path

CLAIM_SEEN_SECONDS = 30.0


def blocker_for(err: ApiError, what: str) -> Blocker:
    """What a refused create means for the job: wait and retry, or fail (the API says the object is invalid)."""
    if err.status == 422:
        return Blocker(Reason.INVALID_SPEC, f"the API server refused {what}: {err.message}; fix the spec", permanent=True)
    if err.status == 403 and "exceeded quota" in err.message:
        return Blocker(Reason.QUOTA_EXCEEDED, f"{what}: {err.message}; raise the namespace's ResourceQuota or wait")
    if err.status == 403 and "service account" in err.message:
        return Blocker(Reason.SERVICE_ACCOUNT_NOT_FOUND, f"{what}: {err.message}; create it or fix spec.serviceAccountName")
    if err.status == 404:
        return Blocker(Reason.API_NOT_INSTALLED, f"{what}: the API it needs is not installed ({err.message})")
    return Blocker(err.reason or Reason.CREATE_FAILED, f"{what}: {err.message}")


class Creator:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        # Claims seen to exist: (namespace, claim) -> monotonic time until which that is trusted.
        self._claims_seen: dict[tuple[str, str], float] = {}

    async def create(self, job: dict[str, Any], spec: LMTrainingJobSpec, attempt: int, ranks: list[int]) -> tuple[Blocker | None, list[PodView]]:
        """Create the job's children and the attempt's pods of `ranks`: a Blocker says why not,
        else the pods that this call created (not those that were there already)."""
        meta = job["metadata"]
        for field_path, claim in (("spec.checkpoint.claimName", spec.checkpoint.claimName), ("spec.data.claimName", spec.data.claimName if spec.data else None)):
            if claim and not await self._claim_exists(meta["namespace"], claim):
                return Blocker(
                    Reason.CLAIM_NOT_FOUND,
                    f"PersistentVolumeClaim {claim!r} ({field_path}) does not exist in namespace {meta['namespace']}; create it or fix {field_path}",
                ), []
        blocker, _ = await self._create_all(job_children(job, spec))
        if blocker is not None:
            return blocker, []
        wanted = set(ranks)
        pods = [p for p in attempt_pods(job, attempt, spec) if int(p["metadata"]["labels"][wiring.NODE_RANK_LABEL]) in wanted]
        blocker, created = await self._create_all(pods)
        views = [seen for seen in map(view, created) if seen is not None]
        return blocker, views

    async def _claim_exists(self, namespace: str, claim: str) -> bool:
        """Whether the claim exists, read at most every CLAIM_SEEN_SECONDS. A claim deleted
        meanwhile leaves the pods Unschedulable, which the job's status reports."""
        key = (namespace, claim)
        if time.monotonic() < self._claims_seen.get(key, 0.0):
            return True
        if await self.kube.get(path("v1", "PersistentVolumeClaim", namespace, claim)) is None:
            return False
        self._claims_seen[key] = time.monotonic() + CLAIM_SEEN_SECONDS
        return True

    async def _create_all(self, objects: list[dict[str, Any]]) -> tuple[Blocker | None, list[dict[str, Any]]]:
        """Create objects concurrently (each idempotently): the first refusal as a Blocker, and the objects created."""
        results = await asyncio.gather(*(self.kube.create(obj) for obj in objects), return_exceptions=True)
        for obj, result in zip(objects, results):
            if isinstance(result, ApiError) and result.status < 500:
                return blocker_for(result, f"{obj['kind']} {obj['metadata']['name']}"), []
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return None, [result for result in results if isinstance(result, dict)]
