"""Leader election on a coordination.k8s.io Lease, so that of two operator replicas only one acts.

The replica that holds the Lease runs kopf; the other waits. A holder that
finds the Lease taken by another stops (and its pod restarts), as
client-go's leader election does; while renewals fail (the API server is away)
it pauses instead, and resumes if the Lease still names it. Chosen over kopf's peering, which needs its
own cluster-scoped CRDs and pauses rather than elects; this needs only
get/create/update on one Lease in the operator's namespace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from kubespeed_operator.run.kube import ApiError, Kube, path

logger = logging.getLogger("kubespeed.operator")

LEASE_API = "coordination.k8s.io/v1"


def _micro(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    value = value.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in value else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(value, fmt).replace(tzinfo=timezone.utc)


class Lease:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, duration: int = 15):
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_every = duration / 3
        self._renewed = time.monotonic()

    @property
    def _path(self) -> str:
        return path(LEASE_API, "Lease", self.namespace, self.name)

    def _spec(self, now: datetime, lease: dict[str, Any] | None) -> dict[str, Any]:
        old = (lease or {}).get("spec") or {}
        taking_over = old.get("holderIdentity") != self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration,
            "acquireTime": _micro(now) if taking_over else old.get("acquireTime") or _micro(now),
            "renewTime": _micro(now),
            "leaseTransitions": (old.get("leaseTransitions") or 0) + (1 if taking_over and old.get("holderIdentity") else 0),
        }

    async def try_acquire(self) -> bool:
        """Take or renew the Lease if it is free, expired or ours; False if another holder is alive."""
        now = datetime.now(timezone.utc)
        lease = await self.kube.get(self._path)
        if lease is None:
            body = {"apiVersion": LEASE_API, "kind": "Lease", "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(now, None)}
            return await self.kube.create(body) is not None
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        expired = renewed is None or renewed + timedelta(seconds=spec.get("leaseDurationSeconds") or self.duration) < now
        if holder and holder != self.identity and not expired:
            return False
        body = {**lease, "spec": self._spec(now, lease)}
        try:
            await self.kube.request("PUT", self._path, body)
        except ApiError as err:
            if err.status == 409:
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Wait until this replica leads."""
        logged = False
        while True:
            try:
                if await self.try_acquire():
                    logger.info("leading: Lease %s/%s held by %s", self.namespace, self.name, self.identity)
                    return
            except (ApiError, OSError, asyncio.TimeoutError) as err:
                logger.warning("cannot read Lease %s/%s: %s", self.namespace, self.name, err)
            if not logged:
                logger.info("waiting for Lease %s/%s: another replica leads", self.namespace, self.name)
                logged = True
            await asyncio.sleep(self.renew_every)

    def held(self) -> bool:
        """Renewed within the lease duration: safe to act. False while the API server cannot be reached."""
        return time.monotonic() - self._renewed < self.duration

    async def keep(self) -> None:
        """Renew until another replica holds the Lease (returns then).

        While the API server is unreachable (a restart, an upgrade) renewals fail and
        `held()` turns False, so the operator pauses; when it answers again and the
        Lease still names this replica, nobody else can have acted, and work resumes.
        """
        self._renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if await self.try_acquire():
                    self._renewed = time.monotonic()
                    continue
                logger.error("lost Lease %s/%s to another replica; stopping", self.namespace, self.name)
                return
            except (ApiError, OSError, asyncio.TimeoutError) as err:
                logger.warning("cannot renew Lease %s/%s: %s", self.namespace, self.name, err)

    async def release(self) -> None:
        """Hand the Lease back on a clean exit, so a standby takes over at once."""
        try:
            lease = await self.kube.get(self._path)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                await self.kube.request("PUT", self._path, lease)
        except (ApiError, OSError, asyncio.TimeoutError) as err:
            logger.warning("could not release Lease %s/%s: %s", self.namespace, self.name, err)
