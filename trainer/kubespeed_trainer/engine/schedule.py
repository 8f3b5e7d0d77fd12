"""The learning-rate schedule: linear warmup to the peak, then cosine, linear or no decay to `minLr`.

A pure function of the step, so a resumed run sets exactly the learning rate an
uninterrupted one would (the trainer wraps it in a `LambdaLR`, whose state
DeepSpeed checkpoints). Warmup and cosine follow nanoGPT's `get_lr`: step `t`
of `w` warmup steps uses lr x (t + 1) / (w + 1).
"""

from __future__ import annotations

import math

from kubespeed.spec.job import ScheduleSpec


def lr_at(step: int, *, peak: float, schedule: ScheduleSpec, total_steps: int) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    warmup = schedule.warmupSteps
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if schedule.decay == "constant" or step >= total_steps:
        return peak if schedule.decay == "constant" else schedule.minLr
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule.decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return schedule.minLr + shape * (peak - schedule.minLr)


def lr_factor(step: int, *, peak: float, schedule: ScheduleSpec, total_steps: int) -> float:
    """`lr_at` as a multiple of the peak, the form `torch.optim.lr_scheduler.LambdaLR` wants."""
    return lr_at(step, peak=peak, schedule=schedule, total_steps=total_steps) / peak
