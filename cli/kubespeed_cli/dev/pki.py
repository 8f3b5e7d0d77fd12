"""Certificates, the service-account signing key and kubeconfigs for one local control plane.

Made with the `openssl` command (present wherever Kubernetes is developed) so the package
needs no crypto dependency. Keys are ECDSA P-256: every component accepts them and they
are generated in milliseconds, which matters when each test session makes a fresh set.
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

# The names the apiserver's serving certificate must carry: loopback for the tests and
# the in-cluster names and first Service IP a pod would use.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVING_NAMES = (
    "IP:127.0.0.1",
    f"IP:{KUBERNETES_SERVICE_IP}",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)
FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: KeyPair
    serving: KeyPair
    service_account_key: Path
    service_account_public_key: Path
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    front_proxy_ca: KeyPair
    front_proxy_client: KeyPair


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _new_key(path: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)
    return path


def _signed(directory: Path, name: str, subject: str, ca: KeyPair, extensions: list[str]) -> KeyPair:
    key = _new_key(directory / f"{name}.key")
    cert = directory / f"{name}.crt"
    args = ["req", "-x509", "-new", "-key", str(key), "-CA", str(ca.cert), "-CAkey", str(ca.key)]
    args += ["-subj", subject, "-days", "3650", "-out", str(cert)]
    for extension in ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", *extensions]:
        args += ["-addext", extension]
    _openssl(*args)
    return KeyPair(cert, key)


def _client(directory: Path, name: str, user: str, group: str | None, ca: KeyPair) -> KeyPair:
    # The apiserver reads the user from CN and the groups from O.
    subject = (f"/O={group}" if group else "") + f"/CN={user}"
    return _signed(directory, name, subject, ca, ["extendedKeyUsage=clientAuth"])


def _ca(directory: Path, name: str, common_name: str) -> KeyPair:
    ca = KeyPair(directory / f"{name}.crt", _new_key(directory / f"{name}.key"))
    _openssl(
        "req", "-x509", "-new", "-key", str(ca.key), "-subj", f"/CN={common_name}", "-days", "3650",
        "-out", str(ca.cert), "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return ca


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca", "kubespeed-dev-ca")
    # The aggregation layer's own CA, as kubeadm makes it: without it the components that
    # delegate authentication complain, every few seconds, that the request-header CA is missing.
    front_proxy_ca = _ca(directory, "front-proxy-ca", "kubespeed-dev-front-proxy-ca")
    sa_key = _new_key(directory / "service-account.key")
    sa_pub = directory / "service-account.pub"
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    serving = _signed(
        directory, "serving", "/CN=kube-apiserver", ca,
        ["extendedKeyUsage=serverAuth", "subjectAltName=" + ",".join(SERVING_NAMES)],
    )  # fmt: skip
    return Pki(
        ca=ca,
        serving=serving,
        service_account_key=sa_key,
        service_account_public_key=sa_pub,
        # system:masters is what kubeadm's admin.conf carries: everything, past RBAC.
        admin=_client(directory, "admin", "kubespeed-admin", "system:masters", ca),
        # The users the RBAC bootstrap policy grants the components' own roles to.
        controller_manager=_client(directory, "controller-manager", "system:kube-controller-manager", None, ca),
        scheduler=_client(directory, "scheduler", "system:kube-scheduler", None, ca),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=_client(directory, "front-proxy-client", FRONT_PROXY_CLIENT, None, front_proxy_ca),
    )


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, client: KeyPair, namespace: str = "default") -> Path:
    """A kubeconfig with the certificates inlined, so it stays valid wherever it is copied."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubespeed-dev", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [
            {
                "name": "kubespeed-dev",
                "user": {"client-certificate-data": _b64(client.cert), "client-key-data": _b64(client.key)},
            }
        ],
        "contexts": [
            {"name": "kubespeed-dev", "context": {"cluster": "kubespeed-dev", "user": "kubespeed-dev", "namespace": namespace}}
        ],
        "current-context": "kubespeed-dev",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
