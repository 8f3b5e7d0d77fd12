"""The operator's rooms import one way: build and decide need only the core `kubespeed`; run uses both.
No room needs the kubernetes client package, or loads torch, deepspeed or the trainer."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "deepspeed", "kubespeed_trainer")
RUNNING = ("kopf", "aiohttp", "orjson", "prometheus_client", "kubespeed_operator.run")

ROOMS = [
    ("kubespeed_operator.build", (*HEAVY, *RUNNING, "kubespeed_operator.decide")),
    ("kubespeed_operator.decide", (*HEAVY, *RUNNING, "kubespeed_operator.build")),
    ("kubespeed_operator.run", HEAVY),
]


def import_room(package: str, forbidden: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Import every module of `package` in a fresh interpreter where the kubernetes package is not
    installed (as in the operator image); it prints which of `forbidden` got loaded."""
    code = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['kubernetes'] = None\n"
        f"package = importlib.import_module({package!r})\n"
        "for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "    importlib.import_module(module.name)\n"
        f"print(' '.join(name for name in {forbidden!r} if sys.modules.get(name)))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("package, forbidden", ROOMS, ids=[room for room, _ in ROOMS])
def test_a_room_imports_without_the_kubernetes_client_and_loads_nothing_it_must_not(package: str, forbidden: tuple[str, ...]) -> None:
    result = import_room(package, forbidden)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
