"""The release workflow publishes what the chart installs by default (the workflow read as YAML)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
VALUES = yaml.safe_load((REPO / "charts" / "kubespeed" / "values.yaml").read_text())
CHART = yaml.safe_load((REPO / "charts" / "kubespeed" / "Chart.yaml").read_text())
ENV = WORKFLOW["env"]


def _release_check() -> Any:
    loader = importlib.machinery.SourceFileLoader("release_check", str(REPO / "scripts" / "release-check"))
    spec = importlib.util.spec_from_loader("release_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def build_step(job: str) -> dict[str, Any]:
    return next(step for step in WORKFLOW["jobs"][job]["steps"] if step.get("uses", "").startswith("docker/build-push-action"))


def test_a_version_tag_triggers_the_release() -> None:
    # PyYAML reads the bare key `on` as True.
    trigger = WORKFLOW.get("on") or WORKFLOW[True]
    assert trigger == {"push": {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}}


@pytest.mark.parametrize(
    "job, target, image, platforms",
    [
        ("operator-image", "operator", VALUES["image"]["repository"], "linux/amd64,linux/arm64"),
        ("trainer-image", "trainer", VALUES["trainer"]["image"].rpartition(":")[0], "linux/amd64"),
    ],
)
def test_each_image_is_pushed_under_the_name_the_chart_installs_by_default(job: str, target: str, image: str, platforms: str) -> None:
    step = build_step(job)["with"]
    assert (step["target"], step["push"], step["platforms"]) == (target, True, platforms)
    env_name = step["tags"].removeprefix("${{ env.").partition(" }}")[0]
    assert ENV[env_name] == image
    assert step["tags"].endswith(":${{ needs.check.outputs.version }}")


def test_the_operator_image_defaults_to_the_charts_version_and_the_trainer_image_names_it() -> None:
    assert VALUES["image"]["tag"] == ""
    assert VALUES["trainer"]["image"] == f"{ENV['TRAINER_IMAGE']}:{CHART['appVersion']}"


def test_the_chart_is_pushed_after_both_images_with_the_pinned_helm() -> None:
    chart = WORKFLOW["jobs"]["chart"]
    assert set(chart["needs"]) == {"check", "operator-image", "trainer-image"}
    helm_mod = (REPO / "tools" / "helm" / "go.mod").read_text()
    assert f"helm.sh/helm/v4 {ENV['HELM_VERSION']}" in helm_mod
    script = next(step["run"] for step in chart["steps"] if "run" in step)
    assert "helm package charts/kubespeed" in script and 'helm push "dist/kubespeed-${VERSION}.tgz" "${CHART_REPOSITORY}"' in script


def test_release_check_accepts_this_checkouts_version_tag() -> None:
    env = {**os.environ, "OPERATOR_IMAGE": ENV["OPERATOR_IMAGE"], "TRAINER_IMAGE": ENV["TRAINER_IMAGE"]}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "release-check"), f"v{CHART['version']}"],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, CHART["version"]), result.stderr


@pytest.mark.parametrize(
    "tag, file_edit, wanted",
    [
        ("v9.9.9", None, "pyproject.toml project.version is '0.1.0', not '9.9.9'"),
        ("0.1.0", None, "is not v<major>.<minor>.<patch>"),
        ("v0.1.0", ("charts/kubespeed/values.yaml", "kubespeed-trainer:0.1.0", "kubespeed-trainer:latest"), "trainer.image"),
        ("v0.1.0", ("charts/kubespeed/values.yaml", "ghcr.io/kubespeed/kubespeed-operator", "example.com/operator"), "image.repository"),
    ],
    ids=["tag-not-the-version", "tag-without-v", "trainer-image-not-the-version", "operator-image-elsewhere"],
)
def test_release_check_names_what_disagrees_with_the_tag(tmp_path: Path, tag: str, file_edit: tuple[str, str, str] | None, wanted: str) -> None:
    for part in ("pyproject.toml", "kubespeed/__init__.py", "charts/kubespeed/Chart.yaml", "charts/kubespeed/values.yaml"):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / part, tmp_path / part)
    if file_edit is not None:
        path, old, new = file_edit
        (tmp_path / path).write_text((tmp_path / path).read_text().replace(old, new))
    _, wrong = _release_check().problems(tag, ENV["OPERATOR_IMAGE"], ENV["TRAINER_IMAGE"], repo=tmp_path)
    assert any(wanted in line for line in wrong), wrong
