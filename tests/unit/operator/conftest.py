"""LMTrainingJob objects for the builder tests: `make_job(a__b=v)` is a minimal job with `spec.a.b = v`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import yaml

from kubespeed import wiring
from spec_overrides import overridden

JOB_NAME = "demo"
NAMESPACE = "team-a"
SHARED_CLAIM = "shared-checkpoints"
UID = "0b7e3f1c-5a4e-4d0f-9c61-2f4f0f6c1a11"


def _job(**spec_overrides: Any) -> dict[str, Any]:
    spec = overridden({"image": "trainer:1", "data": {"train": "builtin:tiny"}}, **spec_overrides)
    checkpoint = spec.get("checkpoint") or {}
    if (spec.get("nodes") or 1) > 1 and "claimName" not in checkpoint and "volumeClaim" not in checkpoint:
        # A gang of several nodes must share its checkpoints (the schema says so).
        spec["checkpoint"] = {**checkpoint, "claimName": SHARED_CLAIM}
    return {
        "apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}",
        "kind": wiring.KIND,
        "metadata": {"name": JOB_NAME, "namespace": NAMESPACE, "uid": UID, "generation": 1},
        "spec": spec,
    }


@pytest.fixture
def make_job() -> Callable[..., dict[str, Any]]:
    """A job as the API server returns it (name `demo`, namespace `team-a`, a uid)."""
    return _job



class Kubeconfig(NamedTuple):
    path: Path
    server: str
    token: str


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Kubeconfig:
    """A kubeconfig file whose one user is a bearer token."""
    server, token = "https://api.example:6443", "t0k3n"
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server + "/", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }  # fmt: skip
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return Kubeconfig(path, server, token)
