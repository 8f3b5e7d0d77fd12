"""`kubespeed local` of a user's program: the job of test_program_training.py (the DeepSpeed tutorial
program, 2 pods x 2 ranks under DeepSpeed's launcher) on this machine, with the same pods' wiring."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from test_program_training import DEEPSPEED_CONFIG, PROGRAM

from kubespeed import wiring

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def torch_extensions() -> Path:
    """DeepSpeed's CPU collectives build a C++ op (deepspeed_shm_comm) at start-up, minutes on 2
    cores the first time; as the user's image would carry it built, it is built once per machine
    for this Python, torch and DeepSpeed, before the job's clock starts."""
    versions = f"torch{metadata.version('torch')}-deepspeed{metadata.version('deepspeed')}"
    # The op's build flags name this environment's paths: one folder per environment.
    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:8]
    folder = Path("/var/tmp") / f"kubespeed-e2e-local-torch-extensions-{versions}-{environment}"
    folder.mkdir(parents=True, exist_ok=True)
    build = "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
    subprocess.run([sys.executable, "-c", build], check=True, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(folder)},
                   capture_output=True, timeout=1800)  # fmt: skip
    return folder


@pytest.mark.parametrize("launcher", ["deepspeed"])
def test_the_same_program_job_runs_under_kubespeed_local(tmp_path: Path, run_dir: Path, torch_extensions: Path, launcher: str) -> None:
    total = 12
    job = {
        "apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}",
        "kind": wiring.KIND,
        "metadata": {"name": "tutorial"},
        "spec": {
            "image": "registry.example/team/deepspeed-tutorial:1",
            "nodes": 2,
            "procsPerNode": 2,
            "gpu": False,
            "program": {"launcher": launcher, "command": [str(PROGRAM), "--steps", str(total), "--save-interval", "5"],
                        "deepspeedConfig": DEEPSPEED_CONFIG},  # fmt: skip
            "checkpoint": {"volumeClaim": {"size": "1Gi"}},
        },
    }
    manifest = tmp_path / "tutorial.yaml"
    manifest.write_text(yaml.safe_dump(job))
    result = subprocess.run([sys.executable, "-m", "kubespeed_cli", "local", str(manifest), "--run-dir", str(run_dir), "--no-progress"],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TORCH_EXTENSIONS_DIR": str(torch_extensions)})  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    checkpoints = run_dir / "tutorial" / "checkpoints"
    steps = [json.loads(line) for line in (checkpoints / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, total + 1))
    assert (checkpoints / "latest").read_text().strip() == f"global_step{total}"
    summary = json.loads((run_dir / "tutorial" / "summary.json").read_text())
    assert summary["step"] == total and summary["outcome"] == "succeeded" and summary["seconds_to_first_step"] is not None
