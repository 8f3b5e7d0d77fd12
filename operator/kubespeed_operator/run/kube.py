"""The operator's requests to the API server: create (409 = already there), get, delete, patch status, watch.

kopf watches the jobs; every other request, and the pod informer (`podwatch`),
goes through this one client. Both log in the same way (`login`: kopf's own
login functions). One aiohttp session speaks plain JSON, so children are
created from the builders' dicts as they are; watches hold their connections
for minutes, so they get a session of their own and never take a slot from the
creates. Responses are decoded with orjson (with `json`, decoding the pod
watch took a fifth of the operator's CPU at 200 jobs x 4 pods).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any, AsyncIterator, Callable

import aiohttp
import kopf
import orjson
import yaml

from kubespeed import wiring

logger = logging.getLogger(__name__)

# apiVersion/kind -> plural, for every kind the operator touches.
PLURALS = {
    "Pod": "pods",
    "Service": "services",
    "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Event": "events",
    "NetworkPolicy": "networkpolicies",
    "PodGroup": "podgroups",
    "Lease": "leases",
    wiring.KIND: wiring.PLURAL,
}
JOB_API_VERSION = f"{wiring.API_GROUP}/{wiring.API_VERSION}"
CONFLICT_RETRIES = 5
# How long an Authorization header is used before logging in again (which re-reads a rotated token).
TOKEN_REUSE_SECONDS = 10.0
# A watch that has sent nothing, not even a bookmark, for this long is taken for broken.
WATCH_SILENCE_SECONDS = 600.0
# A request the API server has not answered within this long is taken for lost. Counted from
# when it is sent: a request queued behind the connection pool's limit (thousands of pods
# created or deleted at once) waits for its turn without a clock, else it would time out
# unsent, or sent but unanswered, and be repeated (a create then answers 409).
REQUEST_SILENCE_SECONDS = 60.0
CONNECT_SECONDS = 30.0


class ApiError(Exception):
    """A refused request; `status` is the HTTP code, `reason` the API's (AlreadyExists, Forbidden, ...)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(PLURALS[kind])
    if name:
        parts.append(name)
    if sub:
        parts.append(sub)
    return "/".join(parts)


def version_order(one: str | None, other: str | None) -> int | None:
    """-1, 0 or 1 as resourceVersion `one` is older than, the same as or newer than `other`;
    None where they do not compare. They are etcd revisions (digits) on the API servers we
    know, though Kubernetes calls them opaque."""
    if not one or not other or not (one.isdigit() and other.isdigit()):
        return None
    return (int(one) > int(other)) - (int(one) < int(other))


def job_path(namespace: str, name: str, sub: str | None = None) -> str:
    return path(JOB_API_VERSION, wiring.KIND, namespace, name, sub)


def login(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo:
    """In-cluster ServiceAccount first, else the kubeconfig (KUBECONFIG or ~/.kube/config).

    kopf's own login functions, which the operator's kopf login handler calls too,
    so kopf's job watch and `Kube` resolve the same credentials.
    """
    settings = settings or kopf.OperatorSettings()
    try:
        in_cluster = kopf.login_with_service_account(settings=settings)
        info = in_cluster or kopf.login_with_kubeconfig(settings=settings)
    except (OSError, KeyError, yaml.YAMLError) as err:
        raise kopf.LoginError(f"cannot read the kubeconfig: {err}") from err
    if info is None:
        raise kopf.LoginError("neither an in-cluster ServiceAccount token nor a kubeconfig (KUBECONFIG or ~/.kube/config)")
    server = service_address()
    if in_cluster is not None and server is not None:
        # kopf always dials https://kubernetes.default.svc; like client-go's in-cluster config,
        # use the address the kubelet gives every pod, which needs no cluster DNS (hostNetwork).
        info = dataclasses.replace(info, server=server)
    return info


def service_address() -> str | None:
    """`https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, when the kubelet set both."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class Credentials:
    """The API server's address and TLS context, read once, and the Authorization header.

    The header comes from logging in again every TOKEN_REUSE_SECONDS, which re-reads
    the ServiceAccount token file: the kubelet rotates a bound token long before it
    expires, and the rotated one is used within seconds.
    """

    def __init__(self, login: Callable[[], kopf.ConnectionInfo]):
        self._login = login
        info = login()
        self.host = info.server.rstrip("/")
        self.ssl = info.as_ssl_context()
        self._headers = info.as_http_headers()
        self._until = time.monotonic() + TOKEN_REUSE_SECONDS

    def headers(self) -> dict[str, str]:
        if time.monotonic() >= self._until:
            self._headers = self._login().as_http_headers()
            self._until = time.monotonic() + TOKEN_REUSE_SECONDS
        return self._headers


class Kube:
    """The operator's API calls; every one is counted in `on_request(verb, code)`."""

    def __init__(self, credentials: Credentials, on_request: Callable[[str, int], None] = lambda verb, code: None):
        self.credentials = credentials
        self.on_request = on_request
        self.session: aiohttp.ClientSession | None = None
        self.watch_session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Kube:
        connector = aiohttp.TCPConnector(limit=32, ssl=self.credentials.ssl)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=CONNECT_SECONDS, sock_read=REQUEST_SILENCE_SECONDS),
        )
        self.watch_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self.credentials.ssl),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS, sock_read=WATCH_SILENCE_SECONDS),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in (self.session, self.watch_session):
            if session is not None:
                await session.close()

    def _headers(self) -> dict[str, str]:
        return {"Accept": "application/json", **self.credentials.headers()}

    async def request(self, method: str, url_path: str, body: Any = None, content_type: str = "application/json", params: dict | None = None) -> dict[str, Any]:
        assert self.session is not None
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = orjson.dumps(body)
        async with self.session.request(method, self.credentials.host + url_path, data=data, headers=headers, params=params) as response:
            self.on_request(method, response.status)
            return _payload(response.status, await response.read())

    async def watch(self, url_path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """The events ({type, object}) of one watch request, decoded, until the API server ends it."""
        assert self.watch_session is not None
        async with self.watch_session.get(self.credentials.host + url_path, params={**params, "watch": "true"}, headers=self._headers()) as response:
            self.on_request("WATCH", response.status)
            if response.status >= 400:
                _payload(response.status, await response.read())
            # One event per line; aiohttp's own line reader refuses lines over 128 KiB.
            rest = b""
            async for chunk in response.content.iter_any():
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)

    async def get(self, url_path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", url_path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create `obj` and return it as stored; None when it is there already (409 is success for a deterministic name)."""
        meta = obj["metadata"]
        try:
            return await self.request("POST", path(obj["apiVersion"], obj["kind"], meta.get("namespace")), obj)
        except ApiError as err:
            if err.status == 409 and err.reason == "AlreadyExists":
                logger.debug("%s %s/%s exists already", obj["kind"], meta.get("namespace"), meta.get("name"))
                return None
            raise

    async def replace(self, obj: dict[str, Any], existing: dict[str, Any]) -> dict[str, Any]:
        """Put `obj` in place of `existing`, guarded by its resourceVersion (a 409 if it changed since it was read)."""
        meta = existing["metadata"]
        body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": meta["resourceVersion"]}}
        return await self.request("PUT", path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]), body)

    async def delete(self, url_path: str, grace_seconds: int | None = None, propagation: str | None = None, uid: str | None = None) -> None:
        """Delete; an object already gone is fine, and so, with `uid`, is one replaced by another of its name."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        if propagation:
            body["propagationPolicy"] = propagation
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", url_path, body)
        except ApiError as err:
            if err.status != 404 and not (uid and err.status == 409):
                raise

    async def patch_status(self, job: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the job's status, guarded by the resourceVersion it was computed from.

        A 409 means the job changed since it was read: the caller recomputes from a
        fresh read (raised as ApiError) rather than writing a status from stale input.
        """
        meta = job["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch}
        return await self.request(
            "PATCH", job_path(meta["namespace"], meta["name"], "status"), body, content_type="application/merge-patch+json"
        )


def _payload(status: int, raw: bytes) -> dict[str, Any]:
    """The decoded body of a response; ApiError for a refusal."""
    try:
        payload = orjson.loads(raw) if raw else {}
    except ValueError:
        # A proxy or an overloaded server answered with something other than a Status.
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    if status >= 400:
        message = payload.get("message") or raw.decode("utf-8", "replace")
        raise ApiError(status, payload.get("reason") or str(status), message)
    return payload


async def with_conflict_retry(attempt: Callable[[], Any], retries: int = CONFLICT_RETRIES) -> Any:
    """Run `attempt` (which reads fresh state itself) again after each 409 Conflict, a few times."""
    for n in range(retries):
        try:
            return await attempt()
        except ApiError as err:
            if err.status != 409 or n == retries - 1:
                raise
            logger.debug("conflict, retrying from fresh state: %s", err.message)
            await asyncio.sleep(0.05 * (n + 1))
    return None
