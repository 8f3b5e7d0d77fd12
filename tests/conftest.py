"""Shared pytest wiring: where the repo and the shared data live, and a real control plane.

    def test_something(control_plane, namespace):   # a fresh namespace on the session's cluster
        core = kubernetes.client.CoreV1Api(control_plane.api_client())

    def test_scheduling(control_plane, gpu_nodes):  # two fake GPU nodes, 8 GPUs each

The control plane is `kubespeed dev cluster`'s (cli/kubespeed_cli/dev). Its binaries, and
Kueue's, are built, if this machine lacks them, right after collection and only when a
collected test uses `control_plane` (`kueue_folder`): a cold build takes longer than any
test timeout, and a build there is not charged to the first test.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubespeed_cli.dev.build import BuildError, ensure_binaries
from kubespeed_cli.dev.cluster import ControlPlane
from kubespeed_cli.dev.kueue import ensure_kueue

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    if not SHAKESPEARE.exists():
        pytest.fail(f"{SHAKESPEARE} is missing: CI lays ../shared beside the clone")
    return SHAKESPEARE


# What is built from pinned Go modules, by the fixture that needs it: built right after
# collection, and only when a collected test uses that fixture.
_BUILDS: dict[str, Callable[[], Path]] = {"control_plane": ensure_binaries, "kueue_folder": ensure_kueue}
_BUILT = pytest.StashKey[dict[str, Path]]()
_BUILD_ERRORS = pytest.StashKey[dict[str, str]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    config.stash[_BUILT], config.stash[_BUILD_ERRORS] = {}, {}
    if config.option.collectonly:
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    for fixture, build in _BUILDS.items():
        if not any(fixture in item.fixturenames for item in session.items):
            continue
        with capture.global_and_fixture_disabled():
            try:
                config.stash[_BUILT][fixture] = build()
            except BuildError as error:
                config.stash[_BUILD_ERRORS][fixture] = str(error)


def _built(config: pytest.Config, fixture: str) -> Path | None:
    errors = config.stash.get(_BUILD_ERRORS, {})
    if fixture in errors:
        pytest.fail(f"the binaries of `{fixture}` did not build:\n{errors[fixture]}", pytrace=False)
    return config.stash.get(_BUILT, {}).get(fixture)


@pytest.fixture(scope="session")
def control_plane(pytestconfig: pytest.Config) -> Iterator[ControlPlane]:
    with ControlPlane(_built(pytestconfig, "control_plane")) as cp:
        yield cp


@pytest.fixture(scope="session")
def kueue_folder(pytestconfig: pytest.Config) -> Path:
    """The cached Kueue build (cli/kubespeed_cli/dev/kueue.py): bin/kueue, its CRDs and webhooks."""
    return _built(pytestconfig, "kueue_folder") or ensure_kueue()


@pytest.fixture(scope="session")
def gpu_nodes(control_plane: ControlPlane) -> list[str]:
    """Two Ready fake GPU nodes (8 x nvidia.com/gpu, tainted nvidia.com/gpu=present:NoSchedule)."""
    return control_plane.add_gpu_nodes(2)


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test, ready for pods; deleted afterwards."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = f"{re.sub(r'[^a-z0-9]+', '-', request.node.name.lower()).strip('-')[:50]}-{secrets.token_hex(3)}"
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    _wait_for_default_service_account(core, name)
    yield name
    # Pods bound to a node wait for a kubelet to confirm their deletion and there is none
    # (unless a test brought its own), so they go at once; the namespace goes in the background.
    try:
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        core.delete_namespace(name)
    except ApiException as error:
        if error.status != 404:
            raise


def _wait_for_default_service_account(core: Any, namespace: str, timeout: float = 60.0) -> None:
    """Pods are refused until the serviceaccount controller has made `default`, as in any cluster."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test that used the control plane gets the components' log tails in its report."""
    report = yield
    cp = item.funcargs.get("control_plane") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(cp, ControlPlane) and cp.processes:
        report.sections.append(("control plane logs (last lines)", cp.logs_tail(15)))
    return report
