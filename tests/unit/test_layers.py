"""The layers run one way: import-linter checks the contracts in pyproject.toml against the code.

front (kubespeed_cli) -> the operator | the trainer -> the core (kubespeed); inside the
operator, run -> build | decide; and what each room must never load (torch in the
operator and in `kubespeed local`'s own process, kopf in the trainer, any framework in
the core).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_import_contract_is_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
