"""A job that asks for GPUs where torch cannot use one stops at once, saying why and whether a retry can help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubespeed import wiring
from kubespeed_trainer.engine import device


@pytest.mark.parametrize(
    ("build", "visible", "ranks", "code", "says"),
    [
        (None, 0, 1, wiring.EXIT_CONFIG_ERROR, "CPU-only build"),
        ("12.8", 0, 1, wiring.EXIT_NO_GPU, "sees 0 GPU(s) for its 1 rank(s)"),
        ("12.8", 1, 2, wiring.EXIT_NO_GPU, "sees 1 GPU(s) for its 2 rank(s)"),
    ],
    ids=["cpu-only-torch-is-the-images-fault", "no-gpu-visible-is-the-nodes-fault", "too-few-gpus-for-the-ranks"],
)
def test_why_gpu_ranks_cannot_start(build: str | None, visible: int, ranks: int, code: wiring.ExitCode, says: str) -> None:
    problem = device.gpu_problem(build, visible, ranks)
    assert problem is not None
    assert problem[0] == code and "spec.gpu" in problem[1] and says in problem[1]


def test_enough_gpus_is_no_problem() -> None:
    assert device.gpu_problem("12.8", 8, 8) is None


def test_train_with_gpu_true_on_this_gpu_less_machine_exits_with_the_reason(tmp_path: Path, text_file: Path) -> None:
    expected = device.check_gpu()
    if expected is None:
        pytest.skip("this machine has a usable GPU")
    config = tmp_path / "trainer.yaml"
    config.write_text(yaml.safe_dump({"data": {"train": str(text_file), "tokenizer": {"type": "char"}}, "training": {"steps": 1}}))
    result = subprocess.run(
        [sys.executable, "-m", "kubespeed_cli", "train", str(config), "--gpu", "true", "--checkpoint-dir", str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == expected[0].code, result.stderr[-2000:]
    assert expected[1] in result.stderr
    assert not (tmp_path / "ckpt").exists()
