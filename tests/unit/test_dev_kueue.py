"""How Kueue is pinned, keyed and wired to a dev control plane (no Go, no cluster: see tests/e2e/test_kueue.py)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
import yaml

from kubespeed_cli.dev import kueue

MANIFEST = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- name: mpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
- name: mdeployment.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-apps-v1-deployment}}
  rules: [{apiGroups: [apps], apiVersions: [v1], operations: [CREATE], resources: [deployments]}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: validating-webhook-configuration}
webhooks:
- name: vclusterqueue.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /validate-kueue-x-k8s-io-v1beta2-clusterqueue}}
  rules: [{apiGroups: [kueue.x-k8s.io], apiVersions: [v1beta2], operations: [CREATE, UPDATE], resources: [clusterqueues]}]
"""


def test_webhooks_are_reached_by_url_on_loopback_and_only_enabled_kinds_are_kept() -> None:
    mutating, validating = kueue.webhook_configurations(MANIFEST, "https://127.0.0.1:9443", b"CA")
    assert [h["name"] for h in mutating["webhooks"]] == ["mpod.kb.io"]
    assert [h["name"] for h in validating["webhooks"]] == ["vclusterqueue.kb.io"]
    pod_hook = mutating["webhooks"][0]
    assert pod_hook["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate--v1-pod", "caBundle": base64.b64encode(b"CA").decode()}
    assert validating["webhooks"][0]["clientConfig"]["url"].endswith("/validate-kueue-x-k8s-io-v1beta2-clusterqueue")
    assert (mutating["metadata"]["name"], validating["metadata"]["name"]) == tuple(kueue.WEBHOOK_NAMES.values())


def test_only_pods_that_name_a_queue_go_through_kueues_pod_webhook() -> None:
    """Otherwise every pod of the cluster would be refused whenever Kueue is down."""
    pod_hook = kueue.webhook_configurations(MANIFEST, "https://127.0.0.1:1", b"CA")[0]["webhooks"][0]
    assert pod_hook["objectSelector"] == {"matchExpressions": [{"key": kueue.QUEUE_LABEL, "operator": "Exists"}]}


def test_the_manager_listens_on_loopback_with_our_certificates_and_only_the_pod_integration() -> None:
    config = kueue.manager_configuration(kueue.Ports(webhook=1, health=2, metrics=3), Path("/certs"))
    assert config["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": "/certs"}
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:2"
    assert config["metrics"]["bindAddress"] == "127.0.0.1:3"
    assert config["internalCertManagement"] == {"enable": False}
    assert config["integrations"] == {"frameworks": ["pod"]}
    assert yaml.safe_load(yaml.safe_dump(config)) == config


@pytest.fixture
def module_copy(tmp_path: Path) -> Path:
    for name in ("go.mod", "go.sum"):
        shutil.copy(kueue.MODULE_DIR / name, tmp_path / name)
    return tmp_path


def test_the_cache_key_names_the_pinned_kueue_and_changes_with_the_pins(module_copy: Path) -> None:
    key = kueue.cache_key(module_copy)
    assert key == kueue.cache_key() and key.startswith(f"kueue-{kueue.kueue_version()}-")
    with open(module_copy / "go.sum", "a") as pins:
        pins.write("\n")
    assert kueue.cache_key(module_copy) != key


def test_the_build_stamps_the_pinned_version() -> None:
    step = kueue.build_step(Path("/out/kueue"), "v0.17.0")
    assert step.argv[-1] == "sigs.k8s.io/kueue/cmd/kueue"
    assert "-X sigs.k8s.io/kueue/pkg/version.GitVersion=v0.17.0" in " ".join(step.argv)


def test_a_complete_cached_build_is_reused_without_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / kueue.cache_key()
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "kueue").write_text("#!/bin/sh\n")
    (folder / "bin" / "kueue").chmod(0o755)
    (folder / "crd").mkdir()
    (folder / "crd" / "workloads.yaml").write_text("{}")
    (folder / "webhooks.yaml").write_text("{}")
    monkeypatch.setenv("PATH", "")
    assert kueue.ensure_kueue(root=tmp_path) == folder
