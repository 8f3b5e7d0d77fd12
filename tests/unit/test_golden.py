"""What users see stays as it was unless a change means it to: `kubespeed render` of every
example, `kubespeed crd` and `kubespeed --help`, byte for byte against tests/golden/.

A change that alters one of them on purpose rewrites the files with
`KUBESPEED_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden.py` and says
why in its commit; a refactor leaves them alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def kubespeed(*args: str) -> str:
    """The installed console command's output, run as users run it (from the repo root, as README does)."""
    command = Path(sys.executable).with_name("kubespeed")
    result = subprocess.run([str(command), *args], cwd=REPO, capture_output=True, text=True, check=True)
    return result.stdout


CASES = [(f"render/{example.name}", ("render", str(example.relative_to(REPO)))) for example in EXAMPLES]
CASES += [("crd.yaml", ("crd",)), ("help.txt", ("--help",))]


@pytest.mark.parametrize("golden, args", CASES, ids=[c[0] for c in CASES])
def test_output_is_unchanged(golden: str, args: tuple[str, ...]) -> None:
    path = GOLDEN / golden
    output = kubespeed(*args)
    if os.environ.get("KUBESPEED_WRITE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(output)
    assert output == path.read_text(), f"`kubespeed {' '.join(args)}` changed; see this module's docstring"
