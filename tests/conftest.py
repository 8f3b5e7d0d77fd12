"""Shared pytest wiring: where the repo and the shared data live, and a real control plane.

    def test_something(control_plane, namespace):   # a fresh namespace on the session's cluster
        core = kubernetes.client.CoreV1Api(control_plane.api_client())

    def test_scheduling(control_plane, gpu_nodes):  # two fake GPU nodes, 8 GPUs each

The control plane is `kubespeed dev cluster`'s (cli/kubespeed_cli/dev). Its binaries are
built, if this machine lacks them, right after collection and only when a collected
test uses `control_plane`: a cold build takes longer than any test timeout, and a
build there is not charged to the first test.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubespeed_cli.dev.build import BuildError, ensure_binaries
from kubespeed_cli.dev.cluster import ControlPlane

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


_BIN_DIR = pytest.StashKey[Path]()
_BUILD_ERROR = pytest.StashKey[str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if config.option.collectonly or not any("control_plane" in item.fixturenames for item in session.items):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        try:
            config.stash[_BIN_DIR] = ensure_binaries()
        except BuildError as error:
            config.stash[_BUILD_ERROR] = str(error)


@pytest.fixture(scope="session")
def control_plane(pytestconfig: pytest.Config) -> Iterator[ControlPlane]:
    if _BUILD_ERROR in pytestconfig.stash:
        pytest.fail(f"the control-plane binaries did not build:\n{pytestconfig.stash[_BUILD_ERROR]}", pytrace=False)
    with ControlPlane(pytestconfig.stash.get(_BIN_DIR, None)) as cp:
        yield cp


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
