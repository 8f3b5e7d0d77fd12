"""How the operator's own client authenticates: kopf's login functions, and a rotated token used within seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest

from kubespeed_operator.run import kube


def test_no_credentials_is_a_login_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kopf.LoginError):
        kube.login()


def test_an_unreadable_kubeconfig_is_a_login_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(kopf.LoginError, match="absent"):
        kube.login()


def test_a_token_is_reused_for_a_few_seconds_then_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"

    def login() -> kopf.ConnectionInfo:
        # As kopf.login_with_service_account does: the token file is read on every login.
        return kopf.ConnectionInfo(server="https://kubernetes.default.svc", token=token.read_text())

    token.write_text("first")
    reusing = kube.Credentials(login)
    monkeypatch.setattr(kube, "TOKEN_REUSE_SECONDS", 0.0)
    renewing = kube.Credentials(login)
    token.write_text("rotated")
    assert reusing.headers() == {"Authorization": "Bearer first"}
    assert renewing.headers() == {"Authorization": "Bearer rotated"}


def without_the_kubernetes_package(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where the kubernetes package is not installed, as in the operator image."""
    return subprocess.run([sys.executable, "-c", "import sys\nsys.modules['kubernetes'] = None\n" + code], env=env, capture_output=True, text=True)


def test_credentials_load_without_the_kubernetes_package(kubeconfig: Any) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig.path)}
    result = without_the_kubernetes_package("from kubespeed_operator.run import kube\nprint(kube.Credentials(kube.login).host)", env)
    assert (result.returncode, result.stdout.strip()) == (0, kubeconfig.server), result.stderr


def test_the_operator_with_no_credentials_says_so_and_exits_2(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"} | {"HOME": str(tmp_path)}
    result = without_the_kubernetes_package("from kubespeed_operator.run import main\nsys.exit(main.main([]))", env)
    assert result.returncode == 2, result.stderr
    assert "kubespeed operator: no cluster credentials" in result.stderr


@pytest.mark.parametrize(
    "env, server",
    [
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.96.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, "https://[fd00::1]:6443"),
        ({}, "https://kubernetes.default.svc"),
    ],
    ids=["ipv4", "ipv6", "no-service-env"],
)
def test_in_cluster_the_api_server_is_the_address_the_kubelet_gives_the_pod(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], server: str) -> None:
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    account = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t", ca_path="/ca.crt")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: account)
    info = kube.login()
    assert (info.server, info.token, info.ca_path) == (server, "t", "/ca.crt")
