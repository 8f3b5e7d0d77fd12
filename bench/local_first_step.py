"""Seconds from `kubespeed local` start to the first step: a user's program against the built-in trainer, in one run.

    .venv/bin/python bench/local_first_step.py

Runs, one after the other on this machine, `kubespeed local --fresh` of
manifests/examples/deepspeed-program.yaml (DeepSpeed's launcher, 1 pod x 2 ranks, on the
CPU) and of manifests/examples/quickstart.yaml (the built-in trainer, 1 pod x 2 ranks),
each cut to a few steps with --set, and prints one JSON line: each run's
seconds_to_first_step and wall_s as its summary.json records them (the first step is
the first time rank 0's endpoint reports a step). DeepSpeed's CPU collectives build a
C++ op on a machine's first run (cached under ~/.cache/torch_extensions); run twice for
the warm figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "program": ("deepspeed-program", ['program.command=[/opt/program/train.py, --steps, "20"]']),
    "builtin": ("quickstart", ["training.steps=20", "training.evalInterval=0", "checkpoint.exportWeights=false"]),
}


def run(example: str, overrides: list[str], run_dir: Path) -> dict:
    command = [sys.executable, "-m", "kubespeed_cli", "local", str(REPO / "manifests" / "examples" / f"{example}.yaml"),
               "--run-dir", str(run_dir), "--fresh", "--no-progress", *(a for o in overrides for a in ("--set", o))]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / example / "summary.json").read_text())
    return {"seconds_to_first_step": summary["seconds_to_first_step"], "wall_s": summary["wall_seconds"], "example": example}


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kubespeed-bench-") as folder:
        figures = {name: run(example, overrides, Path(folder)) for name, (example, overrides) in RUNS.items()}
    print(json.dumps({"settings": {"pods": 1, "ranks_per_pod": 2, "device": "cpu", "steps": 20}, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
