"""Gradient clipping folded into the fused AdamW step: DeepSpeed's result, on the engines that clip tensor by tensor.

Real DeepSpeed engines in a world of one, built by the trainer's own `build_engine`
from the DeepSpeed config it resolves: one clipping the DeepSpeed way, one with the
clipping folded into the optimizer step, fed the same batches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubespeed import deepspeed_config
from kubespeed.spec import parse_trainer_config

VOCAB, SEQ, BATCH = 17, 16, 4


def trainer_config(tmp: Path, clipping: float, optimizer: str = "adamw", **deepspeed):
    return parse_trainer_config({
        "model": {"type": "gpt", "size": "tiny"}, "data": {"train": str(tmp)},
        "training": {"globalBatchSize": BATCH, "microBatchSize": BATCH, "seqLength": SEQ, "gradientClipping": clipping,
                     "optimizer": {"type": optimizer, "lr": 1e-2}},
        "deepspeed": {"precision": "fp32", **deepspeed}})


def engine_for(config):
    from kubespeed_trainer.engine import build

    ds_config = deepspeed_config.resolve_deepspeed_config(config, world_size=1, gpu=False)
    engine, _ = build.build_engine(config, ds_config, VOCAB, None)
    return engine


def train(engine, steps: int) -> list[float]:
    """Steps on fixed random batches; each step's gradient norm before clipping, measured by hand."""
    from kubespeed_trainer.engine import objectives

    generator = torch.Generator().manual_seed(3)
    norms = []
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=generator)
        loss = objectives.loss(engine(tokens[:, :-1]), tokens[:, 1:], torch.ones(BATCH, SEQ))
        engine.backward(loss)
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in engine.module.parameters()]))))
        engine.step()
    return norms


@pytest.mark.parametrize("name, clipping", [("gradients above the limit are scaled down", 0.05),
                                            ("gradients within the limit are left as they are", 1e4)])
def test_clipping_in_the_fused_step_trains_as_deepspeeds_own_clipping(world_of_one, tmp_path, name, clipping):
    from kubespeed_trainer.engine import clipping as folding

    config = trainer_config(tmp_path, clipping)
    deepspeeds, folded = engine_for(config), engine_for(config)
    assert folding.fold_into_fused_step(folded), name

    expected_norms, norms = train(deepspeeds, 4), train(folded, 4)

    assert (max(norms) > clipping) is (clipping < 1), f"{name}: the case does not exercise what it says"
    assert norms == pytest.approx(expected_norms, rel=1e-5), name
    assert folded.get_global_grad_norm().item() == pytest.approx(norms[-1], rel=1e-5), f"{name}: the engine reports the norm"
    for theirs, ours in zip(deepspeeds.module.parameters(), folded.module.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, clipping, optimizer, deepspeed, folds",
    [
        ("ZeRO 0 in fp32 with torch's fused AdamW", 1.0, "adamw", {}, True),
        ("no clipping asked for", 0.0, "adamw", {}, False),
        ("ZeRO 1 clips its flat partitions itself", 1.0, "adamw", {"zeroStage": 1}, False),
        ("SGD has no fused step", 1.0, "sgd", {}, False),
    ],
)
def test_which_engines_clip_in_the_fused_step(world_of_one, tmp_path, name, clipping, optimizer, deepspeed, folds):
    from kubespeed_trainer.engine import clipping as folding

    engine = engine_for(trainer_config(tmp_path, clipping, optimizer, **deepspeed))
    assert folding.fold_into_fused_step(engine) is folds, name
