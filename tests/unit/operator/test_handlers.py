"""What the kopf registration promises the rest of the operator, seen through kopf's public API."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any, Iterator

import kopf
import pytest

from kubespeed import wiring
from kubespeed_operator.run import handlers, kube
from kubespeed_operator.run.settings import NoDiffBase, configure

# kopf's decorators whose handlers read the diff base that settings.NoDiffBase never builds.
DIFF_BASE_READERS = {"resume", "create", "update", "delete", "field", "daemon", "timer"}
DECORATORS = [name for name, fn in vars(kopf.on).items() if inspect.isfunction(fn) and fn.__module__ == "kopf.on" and not name.startswith("_")]


@pytest.fixture(scope="module")
def registered() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """(decorator, its arguments) for each handler the module registers, into a registry of its own."""
    used: list[tuple[str, dict[str, Any]]] = []
    patch = pytest.MonkeyPatch()

    def recording(name: str, decorator: Any) -> Any:
        def decorate(*args: Any, **kwargs: Any) -> Any:
            used.append((name, kwargs))
            return decorator(*args, **kwargs)

        return decorate

    for name in DECORATORS:
        patch.setattr(kopf.on, name, recording(name, getattr(kopf.on, name)))
    default = kopf.get_default_registry()
    kopf.set_default_registry(kopf.OperatorRegistry())
    try:
        importlib.reload(handlers)
    finally:
        kopf.set_default_registry(default)
        patch.undo()
    yield used


def test_no_handler_reads_kopfs_diff_base(registered: list[tuple[str, dict[str, Any]]]) -> None:
    assert not {name for name, _ in registered} & DIFF_BASE_READERS


def test_the_jobs_are_watched_by_one_event_handler(registered: list[tuple[str, dict[str, Any]]]) -> None:
    jobs = {"group": wiring.API_GROUP, "version": wiring.API_VERSION, "plural": wiring.PLURAL}
    assert [kwargs for name, kwargs in registered if name == "event"] == [jobs]


def test_kopf_logs_in_through_the_operators_own_login(registered: list[tuple[str, dict[str, Any]]]) -> None:
    assert "login" in {name for name, _ in registered}


def test_the_settings_never_build_a_diff_base() -> None:
    settings = kopf.OperatorSettings()
    configure(settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None


class Router:
    """Stands in for main.Operator, recording what the handler asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def job_seen(self, job: dict[str, Any]) -> None:
        self.calls.append(("job_seen", job["metadata"]["name"]))

    def job_deleted(self, job: dict[str, Any]) -> None:
        self.calls.append(("job_deleted", job["metadata"]["name"]))


@pytest.mark.parametrize("event, want", [("ADDED", "job_seen"), ("MODIFIED", "job_seen"), (None, "job_seen"), ("DELETED", "job_deleted")])
def test_a_job_event_goes_to_its_job(event: str | None, want: str) -> None:
    router = Router()
    body = kopf.Body({"metadata": {"namespace": "ns", "name": "j", "resourceVersion": "1"}})
    asyncio.run(handlers.job_event(type=event, namespace="ns", name="j", body=body, memo=kopf.Memo(operator=router)))
    assert router.calls == [(want, "j")]


def test_kopf_and_the_operators_client_resolve_the_same_credentials(kubeconfig: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig.path))
    info = asyncio.run(handlers.login(settings=kopf.OperatorSettings()))
    credentials = kube.Credentials(kube.login)
    assert credentials.host == info.server.rstrip("/") == kubeconfig.server
    assert credentials.headers() == info.as_http_headers() == {"Authorization": f"Bearer {kubeconfig.token}"}
