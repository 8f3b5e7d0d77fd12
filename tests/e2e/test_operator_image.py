"""The operator image, built here (a Debian base from Debian's packages, then the Dockerfile's
`operator` target, see cli/kubespeed_cli/dev/image.py), runs a training job to the end.

The container runs as the chart's Deployment runs it: the image's non-root user, a read-only
root filesystem with a tmpfs at /tmp, no capabilities, no privilege escalation, and no
credential but its ServiceAccount's bound token, mounted where a kubelet mounts it. It runs
in the node agent's network (as a pod would), so it also reads rank 0's progress.

Building costs minutes (timed in README), so it runs only when the operator image's recipe
changed since tests/e2e/operator-image.proven (see image_gate.py).

    .venv/bin/python -m pytest tests/e2e/test_operator_image.py -rs
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent import NodeAgent
from kubernetes import client
from image_gate import ImageGate
from training_helpers import Training, of_kind, start

from kubespeed_cli.dev import image as images
from kubespeed_cli.dev.cluster import ControlPlane
from operator_fixture import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, TOKEN_SECONDS, OperatorProcess, install_crd, install_operator_rbac

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
CHART_USER = "65532:65532"


GATE = ImageGate("operator")


@pytest.fixture(scope="module")
def operator_image() -> images.Built:
    return GATE.built()


class ImageOperator(OperatorProcess):
    """`podman run` of the operator image with the chart's security settings, in the node network."""

    def __init__(self, image: str, network: str, account_dir: Path, api_port: int, folder: Path) -> None:
        super().__init__(folder / "unused.kubeconfig", folder, identity="image-operator")
        self.image, self.network, self.account_dir, self.api_port = image, network, account_dir, api_port
        self.name = f"kubespeed-operator-{os.getpid()}"

    def args(self) -> list[str]:
        operator_flags = super().args()[4:]  # what follows `python -m kubespeed_cli operator`
        return images.podman(
            "run", "--rm", "--name", self.name, "--network", f"ns:{self.network}", *images.ulimit_args(),
            "--user", CHART_USER, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--volume", f"{self.account_dir}:{SERVICE_ACCOUNT_DIR}:ro",
            "--env", "KUBERNETES_SERVICE_HOST=127.0.0.1", "--env", f"KUBERNETES_SERVICE_PORT={self.api_port}",
            "--env", f"POD_NAMESPACE={OPERATOR_NAMESPACE}",
            self.image, *operator_flags,
        )  # fmt: skip

    def stop(self) -> int | None:
        code = super().stop()
        subprocess.run(images.podman("rm", "--force", "--ignore", self.name), capture_output=True)
        return code

    def inside(self, *argv: str) -> str:
        return subprocess.run(images.podman("exec", self.name, *argv), capture_output=True, text=True, check=True).stdout


def service_account_dir(control_plane: ControlPlane, folder: Path) -> Path:
    """What the kubelet projects into a pod: a bound token of the operator's account, the CA, the namespace."""
    core = client.CoreV1Api(control_plane.api_client())
    token = core.create_namespaced_service_account_token(OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, {"spec": {"expirationSeconds": TOKEN_SECONDS}})
    account = folder / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token.status.token)
    (account / "ca.crt").write_bytes(control_plane.pki.ca.cert.read_bytes())
    (account / "namespace").write_text(OPERATOR_NAMESPACE)
    for path in (account, *account.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's user, as a projected volume is
    return account


@pytest.fixture(scope="module")
def training_operator(control_plane: ControlPlane, node_agent: NodeAgent, operator_image: images.Built) -> Iterator[ImageOperator]:
    """Named as the e2e conftest's operator fixture, so its `training` fixture uses this one."""
    install_crd(control_plane.api_client())
    install_operator_rbac(control_plane)
    with tempfile.TemporaryDirectory(prefix="kubespeed-image-operator-") as folder:
        os.chmod(folder, 0o755)
        account = service_account_dir(control_plane, Path(folder))
        port = int(control_plane.server.rsplit(":", 1)[1])
        process = ImageOperator(operator_image.image, node_agent.network.path, account, port, Path(folder))
        try:
            process.start(timeout=180)
            yield process
        finally:
            process.stop()


def test_the_operator_image_runs_a_job_to_success_under_the_charts_security_settings(
    training: Training, training_operator: ImageOperator, operator_image: images.Built
) -> None:
    operator = training_operator
    assert operator.inside("id", "-u").strip() == CHART_USER.split(":")[0]
    denied = subprocess.run(images.podman("exec", operator.name, "touch", "/opt/kubespeed/written"), capture_output=True, text=True)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert "kubeconfig" not in operator.inside("env").lower()

    start(training, steps=20, checkpoint_interval=10)
    status = training.wait_phase("Succeeded")
    # The status's progress came from rank 0's metrics, read by the operator in the container.
    assert status["progress"]["step"] == 20 and status["checkpoint"]["step"] == 20
    assert of_kind(training.metrics(), "train")[-1]["step"] == 20

    GATE.record(operator_image)
