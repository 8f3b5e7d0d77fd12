"""What the trainer's processes import: the launcher no engine, no command deepspeed before it chose a device, nothing the operator.

DeepSpeed picks its accelerator when first imported, so a command that imported it before
`device.select_accelerator` would leave the choice to DeepSpeed; the launcher runs in every
pod before any rank starts, and needs only torch's elastic agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kubespeed import wiring
from kubespeed_trainer.engine import compilation

# Imports in the order a process meets them, and what was loaded after each step.
PROBE = """
import importlib, json, pkgutil, sys

def loaded(*names):
    return sorted(name for name in names if name in sys.modules)

seen = {}
import kubespeed_trainer.commands.launch
seen["launch"] = loaded("deepspeed", "transformers", "kubespeed_trainer.engine", "kubespeed_trainer.models", "kubespeed_trainer.data")
for command in ("export", "prepare", "sample", "train"):
    importlib.import_module("kubespeed_trainer.commands." + command)
seen["commands"] = loaded("deepspeed")
from kubespeed_trainer.engine import device
device.select_accelerator(False)
import kubespeed_trainer
for module in pkgutil.walk_packages(kubespeed_trainer.__path__, "kubespeed_trainer."):
    importlib.import_module(module.name)
seen["every module"] = loaded("kopf", "kubespeed_operator")
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "step",
    ["launch", "commands", "every module"],
    ids=["the launcher imports neither deepspeed, transformers nor the engine, models or data",
         "no command imports deepspeed before it selected the accelerator",
         "the trainer imports neither kopf nor the operator"],
)
def test_modules_a_trainer_process_does_not_load(loaded: dict[str, list[str]], step: str) -> None:
    assert loaded[step] == []


PRELOAD_PROBE = """
import importlib, json, os, sys
from kubespeed_trainer.commands import launch
before = dict(os.environ)
for name in launch.rank_preload([], os.environ):
    importlib.import_module(name)
import torch
found = {"changed": sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)),
         "deepspeed": "deepspeed" in sys.modules, "cuda": torch.cuda.is_initialized()}
if found["deepspeed"]:
    from deepspeed.accelerator import get_accelerator
    found["accelerator"] = get_accelerator().device_name()
print(json.dumps(found))
"""


@pytest.mark.parametrize(
    "gpu, loaded",
    [
        ("0", {"changed": [], "deepspeed": True, "cuda": False, "accelerator": "cpu"}),
        ("1", {"changed": [], "deepspeed": False, "cuda": False}),
    ],
    ids=["ranks on the CPU start with DeepSpeed's CPU accelerator loaded and the environment as it was",
         "ranks on GPUs start without DeepSpeed, which would initialise CUDA"],
)
def test_the_forkserver_preload_leaves_the_ranks_environment_and_cuda_alone(gpu: str, loaded: dict) -> None:
    # Every rank is forked from the process that imported these: whatever their import set,
    # a rank would inherit (TorchInductor's cache directory, DeepSpeed's accelerator, CUDA).
    env = {**os.environ, wiring.ENV_USE_GPU: gpu}
    env.pop("DS_ACCELERATOR", None)
    env.pop(compilation.CACHE_ENV, None)
    result = subprocess.run([sys.executable, "-c", PRELOAD_PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == loaded
