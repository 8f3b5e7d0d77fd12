"""Objectives: causal shifts by one, finetune trains on responses only, denoising corrupts reproducibly."""

from __future__ import annotations

import pytest
import torch

from kubespeed.spec.job import DenoisingSpec
from kubespeed_trainer.engine.objectives import loss, make_batch, span_noise_mask
from kubespeed_trainer.data.tokenizer import ByteTokenizer

TOKENIZER = ByteTokenizer()


def batch_of(rows: int = 4, length: int = 65, mask: torch.Tensor | None = None) -> dict:
    tokens = torch.randint(0, 256, (rows, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": tokens, "loss_mask": mask}


def make(objective: str, batch: dict, seed: int = 0, **denoising):
    return make_batch(objective, batch, tokenizer=TOKENIZER, denoising=DenoisingSpec(**denoising),
                      generator=torch.Generator().manual_seed(seed))


def test_causal_targets_are_the_inputs_shifted_by_one():
    batch = batch_of()
    inputs, targets, mask = make("causal", batch)
    assert torch.equal(inputs, batch["input_ids"][:, :-1])
    assert torch.equal(targets, batch["input_ids"][:, 1:])
    assert mask.dtype == torch.float32 and bool(mask.eq(1).all())


def test_finetune_loss_covers_exactly_the_response_targets():
    response = torch.zeros(2, 9, dtype=torch.bool)
    response[0, 4:7] = True
    response[1, 1:3] = True
    inputs, targets, mask = make("finetune", batch_of(2, 9, response))
    assert mask.tolist() == response[:, 1:].float().tolist()
    assert inputs.shape == targets.shape == mask.shape == (2, 8)


@pytest.mark.parametrize("objective", ["causal", "finetune"])
def test_without_a_loss_mask_every_target_carries_loss(objective):
    _, _, mask = make(objective, batch_of())
    assert bool(mask.eq(1).all())


@pytest.mark.parametrize("rate, mean_span", [(0.15, 3.0), (0.3, 1.0), (0.5, 8.0)])
def test_denoising_corrupts_about_the_corruption_rate_in_spans(rate, mean_span):
    batch = batch_of(rows=16, length=257)
    inputs, targets, mask = make("denoising", batch, corruptionRate=rate, meanSpanLength=mean_span)
    assert torch.equal(targets, batch["input_ids"][:, :-1])
    changed = (inputs != targets).float().mean().item()
    assert abs(changed - rate) < 0.03
    assert bool(mask.eq(1).all())
    noise = span_noise_mask(torch.Size([16, 256]), rate, mean_span, torch.Generator().manual_seed(1))
    spans = (noise[:, 1:] & ~noise[:, :-1]).sum().item() + noise[:, 0].sum().item()
    assert abs(noise.sum().item() / spans - mean_span) < mean_span * 0.25 + 0.5


def test_denoising_mostly_uses_the_mask_token():
    inputs, targets, _ = make("denoising", batch_of(rows=16, length=257))
    changed = inputs != targets
    assert (inputs[changed] == TOKENIZER.mask_id).float().mean().item() > 0.8


def test_denoising_is_reproducible_from_the_generator_seed():
    batch = batch_of()
    assert torch.equal(make("denoising", batch, seed=3)[0], make("denoising", batch, seed=3)[0])
    assert not torch.equal(make("denoising", batch, seed=3)[0], make("denoising", batch, seed=4)[0])


def test_loss_averages_over_kept_positions_only():
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 0] = 100.0  # position 0 is confidently wrong (target 1), but masked out
    targets = torch.tensor([[1, 2, 2, 0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    assert loss(logits, targets, mask).item() == pytest.approx(torch.log(torch.tensor(3.0)).item())


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective"):
        make("contrastive", batch_of())
