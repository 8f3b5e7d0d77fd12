"""Training objectives: turn a packed batch into (inputs, targets, loss mask), and the masked loss.

A batch holds `input_ids` [B, T+1] and optionally `loss_mask` [B, T+1] (from
prompt/response data, True on response tokens). Every objective returns
inputs and targets of length T, so models and engines see one shape.

- causal: inputs = tokens[:-1], targets = tokens[1:]; loss on every position.
- finetune: causal, but where the data has a loss mask only the targets that
  are response tokens (and the eos closing a response) carry loss. Starting
  from `initFrom` is the engine's part; the objective is the masking.
- denoising (a denoising autoencoder for a decoder-only model): x = tokens[:-1]
  is corrupted by replacing random spans (about `corruptionRate` of the
  tokens, mean span length `meanSpanLength`) with the tokenizer's mask id,
  and a tenth of the corrupted tokens with random tokens instead, so the model
  cannot trust that an unmasked token is clean. The target is the original x
  at every position (no shift): the model reads the corrupted sequence left to
  right and must reconstruct the original token at each position, copying
  clean ones and inferring corrupted ones from what precedes them. Loss is on
  every position, as an autoencoder reconstructs its whole input. The noise
  comes only from the generator passed in, so seeding it per step makes the
  corruption reproducible and resumable.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from kubespeed.spec.job import DenoisingSpec
from kubespeed_trainer.data.tokenizer import Tokenizer

RANDOM_TOKEN_FRACTION = 0.1


def make_batch(objective: str, batch: dict, *, tokenizer: Tokenizer, denoising: DenoisingSpec,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs LongTensor[B, T], targets LongTensor[B, T], loss_mask FloatTensor[B, T]) for the objective."""
    tokens = batch["input_ids"]
    if objective in ("causal", "finetune"):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        mask = batch.get("loss_mask")
        if objective == "finetune" and mask is not None:
            return inputs, targets, mask[:, 1:].float()
        return inputs, targets, torch.ones_like(targets, dtype=torch.float32)
    if objective == "denoising":
        original = tokens[:, :-1]
        noise = span_noise_mask(original.shape, denoising.corruptionRate, denoising.meanSpanLength, generator)
        corrupted = original.clone()
        corrupted[noise] = tokenizer.mask_id
        swap = noise & (torch.rand(original.shape, generator=generator) < RANDOM_TOKEN_FRACTION)
        corrupted[swap] = torch.randint(0, tokenizer.vocab_size, (int(swap.sum()),), generator=generator)
        return corrupted, original.clone(), torch.ones_like(original, dtype=torch.float32)
    raise ValueError(f"unknown objective {objective!r}")


def span_noise_mask(shape: torch.Size, rate: float, mean_span: float, generator: torch.Generator) -> torch.Tensor:
    """BoolTensor[B, T] with round(rate·T) noise tokens per row in about round(noise/mean_span) spans.

    As in T5's random_spans_noise_mask: the noise and the clean tokens are each
    cut into the same number of non-empty segments at random, then interleaved,
    so span lengths vary and the exact corruption rate holds in every row.
    """
    rows, length = shape
    noise = min(max(round(length * rate), 1), length - 1)
    spans = max(1, min(round(noise / mean_span), noise, length - noise))
    mask = torch.zeros(rows, length, dtype=torch.bool)
    for row in range(rows):
        noise_lengths = _segment(noise, spans, generator)
        clean_lengths = _segment(length - noise, spans, generator)
        position = 0
        for clean, corrupt in zip(clean_lengths, noise_lengths):
            position += clean
            mask[row, position:position + corrupt] = True
            position += corrupt
    return mask


def _segment(total: int, parts: int, generator: torch.Generator) -> list[int]:
    """`total` split into `parts` positive lengths at random cut points."""
    cuts = (torch.randperm(total - 1, generator=generator)[:parts - 1] + 1).sort().values.tolist()
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:])]


def loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions the mask keeps, computed in float32."""
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    mask = loss_mask.reshape(-1).float()
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def pipeline_loss(logits: torch.Tensor, labels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`loss` as DeepSpeed's pipeline engine calls it: the labels of a micro batch are one object, (targets, loss_mask)."""
    targets, mask = labels
    return loss(logits, targets, mask)
