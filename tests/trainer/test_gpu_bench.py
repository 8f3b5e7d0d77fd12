"""bench/gpu_train.py stays runnable on machines without a GPU: `--tiny` runs the same path on the CPU."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.timeout(300)
def test_gpu_benchmark_tiny_runs_on_the_cpu_and_prints_one_json_line(repo_root):
    out = subprocess.run([sys.executable, str(repo_root / "bench" / "gpu_train.py"), "--tiny"], cwd=repo_root,
                         capture_output=True, text=True, timeout=280, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["mfu"] is None
    assert result["tokens_per_s"] > 0 and result["parameters"] > 0
