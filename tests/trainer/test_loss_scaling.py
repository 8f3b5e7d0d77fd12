"""fp16 dynamic loss scaling as the spec asks for it, through DeepSpeed's own scaler, on every CPU.

DeepSpeed's CPU accelerator runs a whole fp16 engine only where oneDNN has native
fp16 (test_training.py runs that where it can). The loss scaler itself is plain
torch: here DeepSpeed parses the config the trainer resolves from `deepspeed.lossScale`,
builds its dynamic scaler from it exactly as its engine does, and that scaler is
driven by real fp16 gradients that overflow when the scale is too high.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubespeed.spec import parse_trainer_config

FP16_MAX = 65504.0
# Each weight's gradient is INPUT x batch rows = 16 per unit of loss scale: 2^11 fits in fp16, 2^12 overflows.
INPUT, ROWS = 8.0, 2


def deepspeed_scaler(loss_scale: dict, tmp: Path):
    """DeepSpeed's dynamic loss scaler, built from the config the trainer resolves for this `lossScale`."""
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler
    from deepspeed.runtime.precision_config import get_float16_config

    from kubespeed import deepspeed_config

    config = parse_trainer_config({"data": {"train": str(tmp)}, "deepspeed": {"precision": "fp16", "lossScale": loss_scale}})
    resolved = deepspeed_config.resolve_deepspeed_config(config, world_size=1, gpu=False)
    fp16 = get_float16_config(resolved)
    assert fp16.enabled and fp16.loss_scale == 0, "dynamic loss scaling is on"
    return CreateLossScaler(dtype=torch.half, static_loss_scale=0, dynamic_scaling=True,
                            dynamic_loss_args=fp16.dynamic_loss_scale_args())


def fp16_step(scaler) -> bool:
    """One backward pass in fp16 with the scaler's loss scale; True when DeepSpeed sees the gradients overflow
    (with the overflow check of its fp16 optimizer, which then skips the step)."""
    from deepspeed.runtime.utils import CheckOverflow

    weight = torch.ones((4, 4), dtype=torch.float16, requires_grad=True)
    inputs = torch.full((ROWS, 4), INPUT, dtype=torch.float16)
    loss = (inputs @ weight).float().mean() * (ROWS * 4)
    (loss * scaler.loss_scale).backward()
    overflow = CheckOverflow([[weight]]).check()
    if not overflow:
        assert weight.grad.abs().max().item() <= FP16_MAX
    scaler.update_scale(overflow)
    return overflow


def run(scaler, steps: int) -> list[tuple[int, bool]]:
    """(the scale each step tried, whether it overflowed and was skipped)."""
    history = []
    for _ in range(steps):
        tried = int(scaler.loss_scale)
        history.append((tried, fp16_step(scaler)))
    return history


# DeepSpeed counts the window from the step after an overflow (or from the first step): the
# scale doubles after window + 1 clean steps following an overflow, window + 1 at the start.
CASES = [
    (
        "halves on every overflow until the gradients fit, then doubles after a clean window",
        {"initialScalePower": 15, "hysteresis": 1, "window": 3},
        [(2**15, True), (2**14, True), (2**13, True), (2**12, True), (2**11, False), (2**11, False), (2**11, False),
         (2**11, False), (2**12, True), (2**11, False)],
    ),
    (
        "hysteresis 2 tolerates one overflow before the first halving",
        {"initialScalePower": 13, "hysteresis": 2, "window": 100},
        [(2**13, True), (2**13, True), (2**12, True), (2**11, False), (2**11, False)],
    ),
    (
        "a clean start keeps its scale for the window, then grows into overflow",
        {"initialScalePower": 10, "hysteresis": 1, "window": 2},
        [(2**10, False), (2**10, False), (2**10, False), (2**11, False), (2**11, False), (2**12, True), (2**11, False)],
    ),
]


@pytest.mark.parametrize("loss_scale, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_deepspeed_scaler_follows_the_spec(world_of_one: None, tmp_path: Path, loss_scale: dict,
                                           expected: list[tuple[int, bool]]) -> None:
    assert run(deepspeed_scaler(loss_scale, tmp_path), len(expected)) == expected


def test_the_scale_never_drops_below_min_scale(world_of_one: None, tmp_path: Path) -> None:
    scaler = deepspeed_scaler({"initialScalePower": 14, "hysteresis": 1, "window": 100, "minScale": 2**13}, tmp_path)
    assert run(scaler, 1) == [(2**14, True)]
    assert scaler.loss_scale == 2**13
    # Still too high at the floor: DeepSpeed stops the run rather than train on overflowing gradients.
    with pytest.raises(Exception, match="minimum"):
        fp16_step(scaler)
