"""Which device trains, which collective backend joins the ranks, and the device's peak FLOP/s.

One code path for both: with a GPU, DeepSpeed's CUDA accelerator and NCCL; without
one, DeepSpeed's CPU accelerator and gloo. DeepSpeed picks its accelerator once, at
import, from `DS_ACCELERATOR`, so `select_accelerator` must run before anything
imports deepspeed; this module does not import it (`accelerator.py` holds what
needs it). On the CPU accelerator, DeepSpeed 0.19 needs nothing beyond itself and
torch: intel_extension_for_pytorch and oneccl are optional there, and collectives
go through torch's gloo backend.
"""

from __future__ import annotations

import os

import torch

from kubespeed import wiring

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), in FLOP/s,
# matched against torch.cuda.get_device_name(); the first match wins, so more
# specific names come first. A GPU not listed reports no MFU rather than a guess.
GPU_PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
)


def gpu_requested() -> bool:
    """KUBESPEED_GPU when set ("1"/"true"/"0"/"false"), else whether torch sees a GPU."""
    choice = wiring.gpu_choice(os.environ.get(wiring.ENV_USE_GPU))
    return torch.cuda.is_available() if choice is None else choice


def gpu_problem(cuda_build: str | None, visible: int, local_ranks: int) -> tuple[wiring.ExitCode, str] | None:
    """Why ranks told to train on GPUs cannot, with the exit code that says whether a retry helps; None when they can.

    A CPU-only torch in the image is the job's own mistake (a restart lands on the
    same image); a CUDA build that sees too few GPUs is the node's (its container
    runtime, driver or device plugin): the operator decides whether a restart,
    perhaps on another node, can help.
    """
    if cuda_build is None:
        return wiring.EXIT_CONFIG_ERROR, (
            "spec.gpu is true but the torch in spec.image is a CPU-only build: "
            "use an image with a CUDA build of torch, or set spec.gpu: false to train on the CPU"
        )
    if visible < local_ranks:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        return wiring.EXIT_NO_GPU, (
            f"spec.gpu is true but this pod sees {visible} GPU(s) for its {local_ranks} rank(s) "
            f"(CUDA_VISIBLE_DEVICES={devices}): the node's container runtime, NVIDIA driver or device plugin provided none"
        )
    return None


def check_gpu() -> tuple[wiring.ExitCode, str] | None:
    """`gpu_problem` for this process: torch's build, the GPUs it sees, and the ranks in this pod."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    build = torch.version.cuda or getattr(torch.version, "hip", None)
    return gpu_problem(build, torch.cuda.device_count() if build else 0, local_ranks)


def select_accelerator(gpu: bool) -> None:
    """Tell DeepSpeed which accelerator to use; call before importing deepspeed."""
    os.environ["DS_ACCELERATOR"] = "cuda" if gpu else "cpu"


def backend(gpu: bool) -> str:
    return "nccl" if gpu else "gloo"


def bf16_supported(gpu: bool) -> bool:
    """bf16 on this device: GPUs from Ampere on; the CPU always (torch emulates where AVX-512 BF16 is missing)."""
    if not gpu:
        return True
    return torch.cuda.is_bf16_supported()


def peak_flops(gpu: bool) -> float | None:
    """Dense bf16 peak FLOP/s of one rank's GPU, or None on a CPU or an unlisted GPU (MFU is then not reported).

    A CPU's peak depends on its vector units, clock and core count in ways torch
    cannot see, so the trainer reports no MFU there instead of a nominal figure.
    """
    if not gpu:
        return None
    name = torch.cuda.get_device_name()
    for marker, flops in GPU_PEAK_BF16_FLOPS:
        if marker in name:
            return flops
    return None
