"""`deepspeed.compile`: the training model under torch.compile, its kernels cached beside the checkpoints.

DeepSpeed's `engine.compile()` compiles the module in place (state dict keys
unchanged, so checkpoints and export do not see it). TorchInductor generates C++
kernels on a CPU and Triton kernels on a GPU, and builds both with the machine's
compiler against Python's headers; where those are missing the run trains
uncompiled, with a warning, rather than failing at its first step. On a CPU
`inductor_cpu` sets how TorchInductor compiles first.

The kernels go to `compile-cache/` in the checkpoint directory (unless
TORCHINDUCTOR_CACHE_DIR is set), the one place that outlives a pod: a resumed
run, a gang restart or a re-run of the job loads them instead of compiling again.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from kubespeed import checkpoints
from kubespeed.spec import TrainerConfig

COMPILED_MODEL_TYPES = ("gpt", "hf")
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def wanted(config: TrainerConfig) -> bool:
    """Whether the config asks for compilation of a model that takes it (the LSTM and pipeline stages run eager)."""
    return config.deepspeed.compile and config.model.type in COMPILED_MODEL_TYPES and config.deepspeed.pipelineStages == 1


def toolchain_problem(gpu: bool) -> str | None:
    """What is missing to build compiled kernels here, or None: a C++ compiler (CPU) or C compiler (Triton), and Python.h."""
    if gpu:
        names = [os.environ.get("CC"), "cc", "gcc", "clang"]
        kind = "C compiler (for Triton)"
    else:
        names = [os.environ.get("CXX"), "g++", "clang++"]
        kind = "C++ compiler"
    if not any(name and shutil.which(name) for name in names):
        return f"no {kind} on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return f"no Python.h for {sys.executable} (install the Python development headers)"
    return None


def compile_engine(engine: Any, config: TrainerConfig, gpu: bool) -> bool:
    """Compile the engine's model when the config wants it and the toolchain allows; True when it did."""
    if not wanted(config):
        return False
    problem = toolchain_problem(gpu)
    if problem is not None:
        print(f"kubespeed train: warning: deepspeed.compile: {problem}; training uncompiled", file=sys.stderr)
        return False
    if not gpu:
        # Imported here, where torch already is: this module is also used before torch is imported (keep_kernels_in).
        from kubespeed_trainer.engine import inductor_cpu

        inductor_cpu.apply()
    engine.compile()
    return True


def keep_kernels_in(directory: Path, config: TrainerConfig) -> None:
    """Point TorchInductor's cache at the checkpoint directory, unless the user chose one; before torch is imported.

    TorchInductor fixes its cache directory the first time anything asks for it
    (it writes its /tmp default into the environment then), and importing
    DeepSpeed already does, so setting it when compiling is too late.
    """
    if wanted(config):
        os.environ.setdefault(CACHE_ENV, str(directory / checkpoints.COMPILE_CACHE_DIR))
