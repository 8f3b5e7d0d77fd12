"""The DeepSpeed config, resolved from a trainer config: a pure function, no torch, no deepspeed.

The operator calls it (its image has neither torch nor DeepSpeed) to write the
resolved `deepspeed.json` into the job's ConfigMap, and the trainer calls it at
start-up, so what a user reads in the ConfigMap is what the engine runs with.
Combinations the spec cannot hold are refused when it is parsed (its CEL rules);
what only a world size can decide (the batch arithmetic of the ranks actually
started) is refused here, with a `SpecError` that names the field.

    resolve_deepspeed_config(parse_trainer_config(cfg), world_size=4, gpu=False)

Derived values:
- data-parallel size = world size / `deepspeed.pipelineStages`
- gradient accumulation = `training.globalBatchSize` / (`training.microBatchSize` x data-parallel size)
- precision `auto` = bf16 on a GPU that has it, else fp32
- offload only with a GPU: on the CPU, parameters and optimizer state live in host
  memory already, and offload would only swap torch's AdamW for DeepSpeed's CPU
  Adam, a C++ op compiled at start-up (more than ten minutes on a busy 2-core machine)

The learning-rate schedule is not in this config: the trainer builds it from
`training.schedule` (kubespeed_trainer's schedule) and hands it to DeepSpeed. A `scheduler`
given in `deepspeed.overrides` replaces it, like any other override.
"""

from __future__ import annotations

import copy
from typing import Any

from kubespeed.spec import SpecError, TrainerConfig

# DeepSpeed's own per-step console print; the trainer logs metrics itself.
_NEVER = 2**31 - 1


def data_parallel_size(config: TrainerConfig, world_size: int, path: str = "config") -> int:
    """Ranks that each see different data: the world divided into pipeline stages."""
    stages = config.deepspeed.pipelineStages
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if world_size % stages:
        raise SpecError(f"{path}.deepspeed.pipelineStages", f"world size {world_size} is not a multiple of {stages} pipeline stages")
    return world_size // stages


def gradient_accumulation_steps(config: TrainerConfig, world_size: int, path: str = "config") -> int:
    """Micro batches each data-parallel rank runs per optimizer step."""
    training = config.training
    dp = data_parallel_size(config, world_size, path)
    per_step = training.microBatchSize * dp
    if training.globalBatchSize % per_step:
        raise SpecError(
            f"{path}.training.globalBatchSize",
            f"{training.globalBatchSize} is not a multiple of microBatchSize {training.microBatchSize} "
            f"x data-parallel size {dp} (world size {world_size} / {config.deepspeed.pipelineStages} pipeline stages)",
        )
    return training.globalBatchSize // per_step


def resolve_precision(precision: str, gpu: bool, bf16_supported: bool = True) -> str:
    """`fp32`, `fp16` or `bf16`; `auto` takes bf16 only on a GPU that supports it."""
    if precision == "auto":
        return "bf16" if gpu and bf16_supported else "fp32"
    return precision


def _optimizer(config: TrainerConfig, gpu: bool) -> dict[str, Any]:
    opt = config.training.optimizer
    if opt.type == "sgd":
        return {"type": "SGD", "params": {"lr": opt.lr, "momentum": opt.beta1, "weight_decay": opt.weightDecay}}
    params: dict[str, Any] = {"lr": opt.lr, "betas": [opt.beta1, opt.beta2], "eps": opt.eps, "weight_decay": opt.weightDecay}
    if not gpu:
        # DeepSpeed's FusedAdam is a CUDA kernel (on the CPU accelerator it would be
        # compiled at start-up); torch's AdamW is the well-kept CPU implementation.
        # Its fused CPU kernel updates each tensor in one vectorized pass, where the
        # default runs a handful of elementwise ops per tensor: a tenth of a small
        # model's step. DeepSpeed passes the key through to torch.optim.AdamW.
        params["torch_adam"] = True
        params["fused"] = True
    return {"type": "AdamW" if opt.type == "adamw" else "Adam", "params": params}


def _zero(config: TrainerConfig, gpu: bool) -> dict[str, Any]:
    ds = config.deepspeed
    zero: dict[str, Any] = {"stage": ds.zeroStage}
    if not gpu:
        return zero
    if ds.offload.optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if ds.offload.parameters == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    return zero


def _precision(config: TrainerConfig, gpu: bool, bf16_supported: bool) -> dict[str, Any]:
    precision = resolve_precision(config.deepspeed.precision, gpu, bf16_supported)
    if precision == "bf16":
        return {"bf16": {"enabled": True}}
    if precision == "fp16":
        scale = config.deepspeed.lossScale
        return {
            "fp16": {
                "enabled": True,
                "loss_scale": 0,  # 0 = dynamic
                "initial_scale_power": scale.initialScalePower,
                "loss_scale_window": scale.window,
                "hysteresis": scale.hysteresis,
                "min_loss_scale": scale.minScale,
            }
        }
    return {}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: dicts merge key by key, anything else in `overrides` replaces."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_deepspeed_config(
    config: TrainerConfig, world_size: int, gpu: bool, *, bf16_supported: bool = True, path: str = "config"
) -> dict[str, Any]:
    """The DeepSpeed config for `config` on `world_size` ranks; refuses what cannot run."""
    training = config.training
    accumulation = gradient_accumulation_steps(config, world_size, path)
    resolved: dict[str, Any] = {
        "train_batch_size": training.globalBatchSize,
        "train_micro_batch_size_per_gpu": training.microBatchSize,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": training.gradientClipping,
        "optimizer": _optimizer(config, gpu),
        "zero_optimization": _zero(config, gpu),
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
        **_precision(config, gpu, bf16_supported),
    }
    if training.optimizer.type == "sgd" and config.deepspeed.zeroStage > 0:
        # ZeRO refuses optimizers it has not been tested with unless told; torch's SGD
        # keeps per-parameter state only, which ZeRO partitions like Adam's.
        resolved["zero_allow_untested_optimizer"] = True
    return merge(resolved, config.deepspeed.overrides)
