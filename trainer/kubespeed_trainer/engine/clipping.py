"""Gradient clipping folded into torch's fused AdamW step, where DeepSpeed would clip tensor by tensor.

At ZeRO stage 0 in fp32, DeepSpeed's engine clips before the optimizer step
(`DeepSpeedEngine.clip_fp32_gradients`, i.e. `deepspeed.runtime.utils.clip_grad_norm_`):
a norm per parameter, an all-reduce of their total, then a multiply per parameter,
one more pass over every gradient. On a CPU that was a tenth of a small model's
step, as long as the optimizer step itself. torch's fused AdamW kernel divides each
gradient by `optimizer.grad_scale` as it reads it (the hook `GradScaler` unscales
through), so the clip factor rides the update's own pass: left is one foreach norm.

The result is DeepSpeed's: the same norm (ZeRO 0 all-reduces the gradients before
the step, so every rank's local norm is the global one), the same factor
`min(1, max_norm / (norm + 1e-6))`. The norm is handed to the engine the way
DeepSpeed's own optimizers hand theirs (`_global_grad_norm`), so
`engine.get_global_grad_norm()` reports it.
"""

from __future__ import annotations

from typing import Any

import torch

# DeepSpeed's (and torch's) guard against dividing by a zero norm.
NORM_EPS = 1e-6


def fold_into_fused_step(engine: Any) -> bool:
    """Clip inside the optimizer's fused step when the engine would clip tensor by tensor; True when it does.

    Only the engine that clips through `clip_fp32_gradients` qualifies: ZeRO 0, no
    fp16 or bf16 wrapper, no pipeline or model parallelism (whose norm needs a
    collective), clipping on, and a torch optimizer whose every group runs fused.
    """
    optimizer = engine.optimizer
    if (engine.gradient_clipping() <= 0 or engine.zero_optimization() or engine.fp16_enabled() or engine.bfloat16_enabled()
            or engine.mpu is not None or getattr(engine, "pipeline_parallelism", False)
            or not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
            or not all(group.get("fused") for group in optimizer.param_groups)):
        return False
    max_norm = float(engine.gradient_clipping())
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def clip_in_step() -> None:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        # The kernel divides by this: 1 / min(1, max_norm / (norm + eps)).
        optimizer.grad_scale = torch.clamp((norm + NORM_EPS) / max_norm, min=1.0)
        optimizer._global_grad_norm = norm

    engine.clip_fp32_gradients = clip_in_step
    return True
