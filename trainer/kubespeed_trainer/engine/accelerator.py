"""DeepSpeed on the accelerator `device.select_accelerator` chose: the ranks' process group, and the precisions it refuses.

Importing this module imports deepspeed, which picks its accelerator at import:
import it only after `device.select_accelerator`.
"""

from __future__ import annotations

import os

import deepspeed
import deepspeed.ops
import torch
from deepspeed.accelerator import get_accelerator

from kubespeed.ports import free_port
from kubespeed_trainer.engine import device

# Why an accelerator refuses a precision, per DeepSpeed accelerator name, and what to use instead.
_PRECISION_HELP = {
    ("cpu", "fp16"): "DeepSpeed's CPU accelerator trains fp16 only where oneDNN has native fp16 "
                     "(AVX512-FP16 or AMX-FP16, e.g. Intel Sapphire Rapids); use bf16 or fp32 here",
    ("cuda", "bf16"): "bf16 needs an Ampere or newer GPU; use fp16 or fp32 on this one",
}


def init_distributed(gpu: bool) -> None:
    """Join the launcher's process group, or make a world of one when no launcher set one up."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        skip_shm_comm_op()
    deepspeed.init_distributed(dist_backend=device.backend(gpu), verbose=False)


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory op when the process group starts.

    `deepspeed.comm.torch.TorchBackend` builds `deepspeed_shm_comm` (C++, with the
    system compiler) whenever `deepspeed.ops.__compatible_ops__` says it can, after
    probing every op builder. The op serves only `inference_all_reduce`, which
    training never calls, yet building it costs minutes on a busy machine and in
    every fresh pod (the cache lives under $HOME). That dict has no other reader
    in DeepSpeed 0.19 and is documented there as the editable, cached probe result,
    so saying "not compatible" skips both the probe and the build.
    """
    deepspeed.ops.__compatible_ops__ = {"deepspeed_shm_comm": False}


def unsupported_precision(precision: str) -> str | None:
    """Why the selected accelerator cannot train in `precision`, or None when it can.

    DeepSpeed's engine would refuse such a run from every rank with a bare
    `ValueError` from its sanity check, after the ranks have started and joined;
    asked here, before any rank starts, the job fails once as a configuration
    error.
    """
    accelerator = get_accelerator()
    supported = {"fp16": accelerator.is_fp16_supported, "bf16": accelerator.is_bf16_supported}.get(precision)
    if supported is None or supported():
        return None
    name = accelerator.device_name()
    help_text = _PRECISION_HELP.get((name, precision), "choose another precision")
    return f"{precision} is not supported on this device ({name}): {help_text}"
