"""Shared pytest wiring: where the repo and the shared data live."""

from __future__ import annotations

from pathlib import Path

import pytest

# `control_plane`, `namespace` and `gpu_nodes`: a real control plane (kubespeed/devcluster).
pytest_plugins = ["kubespeed.devcluster.pytest_plugin"]

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
