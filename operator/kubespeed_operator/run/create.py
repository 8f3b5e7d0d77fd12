"""Creating what a decision asks for: the job's children, then the attempt's missing pods.

Every create is idempotent (409 is "already there"), so a pass that repeats one
after a crash is harmless; but "already there" counts only for an object owned
by this job's UID, read back after the 409. An object that holds one of the job's
names for another owner (above all a deleted job of the same name, whose children
the garbage collector has not removed yet) is never adopted: the job waits, with
the reason WaitingForOldObjects, and creates its own once they are gone. A
refused create becomes a `Blocker` for `decide`: the job waits and retries, or
fails when the API says the object is invalid. A claim seen to exist is trusted
for CLAIM_SEEN_SECONDS, since many jobs share one (one GET per claim instead of
one per job: 200 GETs at 200 jobs x 4 pods).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Sequence

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec
from kubespeed.spec.status import Reason
from kubespeed_operator.build.children import Cluster, attempt_pods, job_children
from kubespeed_operator.decide.lifecycle import Blocker
from kubespeed_operator.decide.observed import PodView, controller_uid, view
from kubespeed_operator.run.kube import ApiError, Kube, path

CLAIM_SEEN_SECONDS = 30.0
# Children whose content follows spec.nodes (the hostfile and DeepSpeed config; a PodGroup's minMember): when
# one is there already with other content (the job was resized), it is brought up to date before the pods start.
RESIZED_CONTENT: dict[str, Callable[[dict[str, Any]], Any]] = {
    "ConfigMap": lambda obj: obj.get("data"),
    # Only what a resize changes: the API server adds defaults of its own to the rest of the spec.
    "PodGroup": lambda obj: (obj.get("spec") or {}).get("minMember"),
}
# Old objects go by the garbage collector, whose progress is not watched: look again this soon.
OLD_OBJECTS_RETRY_SECONDS = 2.0


def old_objects_blocker(name: str, held: list[str]) -> Blocker:
    """Why the job `name` waits: objects with its names that belong to another owner ("Kind name")."""
    return Blocker(
        Reason.WAITING_FOR_OLD_OBJECTS,
        f"waiting for {', '.join(sorted(held))} to be deleted: they hold this job's names but belong to another owner "
        f"(an earlier job named {name}, or not a job); this job creates its own once they are gone",
        retry_after=OLD_OBJECTS_RETRY_SECONDS,
    )


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

    async def create(
        self, job: dict[str, Any], spec: LMTrainingJobSpec, attempt: int, ranks: list[int], others: Sequence[PodView] = (), cluster: Cluster = Cluster()
    ) -> tuple[Blocker | None, list[PodView]]:
        """Create the job's children and the attempt's pods of `ranks`: a Blocker says why not,
        else the pods that this call created (not those that were there already).

        `others`: pods with the job's label that another owner holds, as the pod watch shows them.
        """
        meta = job["metadata"]
        for field_path, claim in (("spec.checkpoint.claimName", spec.checkpoint.claimName), ("spec.data.claimName", spec.data.claimName if spec.data else None)):
            if claim and not await self._claim_exists(meta["namespace"], claim):
                return Blocker(
                    Reason.CLAIM_NOT_FOUND,
                    f"PersistentVolumeClaim {claim!r} ({field_path}) does not exist in namespace {meta['namespace']}; create it or fix {field_path}",
                ), []
        blocker, _, held = await self._create_all(job_children(job, spec, cluster))
        wanted = set(ranks)
        # A pod name the watch shows held by another owner: no create of it could succeed.
        held += [f"Pod {pod.name}" for pod in others if pod.rank in wanted]
        created: list[dict[str, Any]] = []
        if blocker is None and not held:
            pods = [p for p in attempt_pods(job, attempt, spec, cluster) if int(p["metadata"]["labels"][wiring.NODE_RANK_LABEL]) in wanted]
            blocker, created, held = await self._create_all(pods)
        if blocker is None and held:
            blocker = old_objects_blocker(meta["name"], held)
        return blocker, [seen for seen in map(view, created) if seen is not None]

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

    async def _create_all(self, objects: list[dict[str, Any]]) -> tuple[Blocker | None, list[dict[str, Any]], list[str]]:
        """Create objects concurrently (each idempotently): the first refusal as a Blocker, the objects
        created, and those that were there already but belong to another owner ("Kind name")."""
        results = await asyncio.gather(*(self.kube.create(obj) for obj in objects), return_exceptions=True)
        for obj, result in zip(objects, results):
            if isinstance(result, ApiError) and result.status < 500:
                return blocker_for(result, f"{obj['kind']} {obj['metadata']['name']}"), [], []
        for result in results:
            if isinstance(result, BaseException):
                raise result
        there = [obj for obj, result in zip(objects, results) if result is None]
        held = [f"{obj['kind']} {obj['metadata']['name']}" for obj in await self._held_by_others(there)]
        return None, [result for result in results if isinstance(result, dict)], held

    async def _held_by_others(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of objects that were there already, those whose controller is not the one they were built with;
        this job's own whose content a resize changed are brought up to date."""
        def where(obj: dict[str, Any]) -> str:
            meta = obj["metadata"]
            return path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])

        found = await asyncio.gather(*(self.kube.get(where(obj)) for obj in objects))
        # One deleted meanwhile is retried by the next pass, as one never there would be.
        held = [obj for obj, existing in zip(objects, found) if existing is None or controller_uid(existing) != controller_uid(obj)]
        stale = [(obj, existing) for obj, existing in zip(objects, found) if existing is not None and obj not in held
                 and obj["kind"] in RESIZED_CONTENT and RESIZED_CONTENT[obj["kind"]](existing) != RESIZED_CONTENT[obj["kind"]](obj)]
        # A 409 (changed meanwhile) raises, and the next pass reads it again.
        await asyncio.gather(*(self.kube.replace(obj, existing) for obj, existing in stale))
        return held
