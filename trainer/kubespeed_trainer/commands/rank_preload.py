"""What a launcher's forkserver imports besides torch when its ranks train on DeepSpeed's CPU accelerator.

Every rank is forked from the forkserver (commands/launch.py), so it starts with what the
forkserver imported: here, the modules `kubespeed train` imports once it selected its
device, DeepSpeed and torch._dynamo among them, which were most of a rank's start-up
after an in-place restart; and DeepSpeed's Muon optimizer, which DeepSpeed imports when
it checks the optimizer of every engine it builds, and which compiles functions at
import (TorchInductor's modules: a second of each start, most of building the engine).
Only on the CPU: on a GPU, DeepSpeed's accelerator at import initialises CUDA, which a
forked child cannot use.

Importing this module leaves the environment the ranks inherit as it found it: importing
torch._dynamo writes TorchInductor's default cache directory into it, which a rank must
still be free to point at the checkpoint volume (engine/compilation.py; TorchInductor
reads the variable each time it needs the directory), and DeepSpeed sets
PYTORCH_NVML_BASED_CUDA_CHECK. Each rank selects its accelerator again, as without the
preload.
"""

from __future__ import annotations

import os

from kubespeed_trainer.engine import device


def _restore(environment: dict[str, str]) -> None:
    for name in set(os.environ) - set(environment):
        del os.environ[name]
    for name, value in environment.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


_environment = dict(os.environ)
try:
    device.select_accelerator(False)
    import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    from kubespeed_trainer.engine import accelerator, build, trainer  # noqa: F401
finally:
    _restore(_environment)
