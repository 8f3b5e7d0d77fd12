"""The chart as test_chart.py and test_security.py use it: rendered by the control plane's pinned helm.

`render(cp, values)` is `helm template` for the release the kustomize base stands for
(`kubespeed` in `kubespeed-system`), with a values file of charts/kubespeed/ci/ or the
defaults. SYNC is scripts/sync-manifests loaded as a module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kubespeed_cli.dev.cluster import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubespeed"
# None: the default values; then one values file per mode, with the file's name as the test id.
MODES: list[Path | None] = [None, *sorted((CHART / "ci").glob("*-values.yaml"))]
MODE_IDS = ["default", *(values.name.removesuffix("-values.yaml") for values in MODES[1:] if values)]


def load_sync_script() -> Any:
    """scripts/sync-manifests as a module: the tests compare the tree with what it would write."""
    loader = importlib.machinery.SourceFileLoader("sync_manifests", str(REPO / "scripts" / "sync-manifests"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


SYNC = load_sync_script()


def run(argv: list[Any], cp: ControlPlane, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command (helm, kubectl from the control plane's bin folder) against the control plane."""
    return subprocess.run([str(a) for a in argv], env=cp.env(), input=stdin, capture_output=True, text=True, cwd=REPO)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stderr}{result.stdout}"
    return result.stdout


class Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 floats, as Go reads them: kustomize writes 1.0e-08 as `1e-08`, which
    PyYAML (YAML 1.1) would read as a string."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"), list("-+0123456789.")
)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=Yaml12Loader) if doc]


def template(cp: ControlPlane, values: Path | None = None, *args: Any) -> str:
    """`helm template` output (text) for the base's release, with `values` and further helm arguments."""
    argv = [cp.bin_dir / "helm", "template", SYNC.RELEASE, CHART, "--namespace", SYNC.NAMESPACE, *args]
    return ok(run([*argv, *(["--values", values] if values else [])], cp))


def render(cp: ControlPlane, values: Path | None = None) -> list[dict[str, Any]]:
    return documents(template(cp, values))
