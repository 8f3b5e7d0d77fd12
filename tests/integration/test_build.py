"""How the control-plane binaries are pinned, keyed and reused (no Go run here: see test_controlplane)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubespeed_cli.dev import build


@pytest.fixture
def tools_copy(tmp_path: Path) -> Path:
    for module in build.MODULE_DIRS:
        (tmp_path / "tools" / module).mkdir(parents=True)
        for name in ("go.mod", "go.sum"):
            shutil.copy(build.TOOLS_DIR / module / name, tmp_path / "tools" / module / name)
    return tmp_path / "tools"


def test_cache_key_names_the_pins_and_is_the_same_for_an_identical_checkout(tools_copy: Path) -> None:
    pins = build.read_pins()
    key = build.cache_key(tools_copy)
    assert key == build.cache_key(build.TOOLS_DIR)
    assert key.startswith(f"k8s-{pins.kubernetes}-etcd-{pins.etcd}-helm-{pins.helm}-")


@pytest.mark.parametrize("changed", ["controlplane/go.mod", "controlplane/go.sum", "helm/go.mod", "helm/go.sum"])
def test_cache_key_changes_when_any_pin_file_changes(tools_copy: Path, changed: str) -> None:
    before = build.cache_key(tools_copy)
    with open(tools_copy / changed, "a") as pin_file:
        pin_file.write("\n// changed\n")
    assert build.cache_key(tools_copy) != before


def test_required_versions_reads_require_lines_and_skips_replacements() -> None:
    go_mod = """module example
require k8s.io/kubernetes v1.37.2
require (
\tgo.etcd.io/etcd/server/v3 v3.7.0 // indirect
\tk8s.io/api v0.0.0
)
replace (
\tk8s.io/api => k8s.io/api v0.37.2
)
"""
    assert build.required_versions(go_mod) == {
        "k8s.io/kubernetes": "v1.37.2",
        "go.etcd.io/etcd/server/v3": "v3.7.0",
        "k8s.io/api": "v0.0.0",
    }


def test_pins_are_the_kubernetes_release_and_the_etcd_it_expects() -> None:
    pins = build.read_pins()
    kubernetes_go_mod = build.required_versions((build.TOOLS_DIR / "controlplane" / "go.mod").read_text())
    # Kubernetes tests against the etcd client it requires; the server is pinned to the same release.
    assert kubernetes_go_mod["go.etcd.io/etcd/client/v3"] == pins.etcd


def test_build_steps_produce_every_binary_with_the_pinned_version_stamped(tmp_path: Path) -> None:
    pins = build.Pins(kubernetes="v1.37.2", etcd="v3.7.0", helm="v4.3.2")
    steps = build.build_steps(tmp_path, pins)
    argv = [" ".join(step.argv) for step in steps]
    kube = next(a for a in argv if "kube-apiserver" in a)
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.37.2" in kube
        assert f"-X {package}.gitMajor=1" in kube and f"-X {package}.gitMinor=37" in kube
    assert any(f"-o {tmp_path}/etcd {build.ETCD_MODULE}" in a for a in argv)
    assert any("helm/v4/internal/version.version=v4.3.2" in a for a in argv)
    named = {command for command in build.KUBE_COMMANDS if command in kube} | {"etcd", "helm"}
    assert named == set(build.BINARIES)


def test_a_complete_cached_folder_is_reused_without_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / build.cache_key() / "bin"
    bin_dir.mkdir(parents=True)
    for name in build.BINARIES:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", "")

    assert build.ensure_binaries(root=tmp_path) == bin_dir


def test_a_missing_toolchain_is_reported_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(build.BuildError, match="`go` is not on PATH"):
        build.ensure_binaries(root=tmp_path)
