"""Every benchmark in bench/ still starts: its imports (some reach into the test helpers,
which move with the tests) and its arguments parse. The figures themselves are the
benchmarks' business, run by hand (README says how); tests never time anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((REPO / "bench").glob("*.py"))


def test_the_benchmarks_are_found() -> None:
    assert {path.name for path in BENCHMARKS} >= {"recovery.py", "operator_scale.py", "first_step.py", "train_shakespeare.py"}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_benchmark_imports_and_explains_its_arguments(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
