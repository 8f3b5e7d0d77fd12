"""The built-in GPT as a DeepSpeed `PipelineModule`.

The layer list is the GPT's own pieces in order, so the stages run exactly the
network the single-stage model runs:

    0        embedding (token + position, dropout)
    1..L     the L transformer blocks
    L+1      the final layer norm
    L+2      the output head

Stages are balanced by block count (`partition_method="type:Block"`). With
`model.tieWeights` the embedding and the head are one `TiedLayerSpec`: the
first and last stage each hold a copy of the token embedding, and DeepSpeed
all-reduces its gradient between them, so the copies stay equal. DeepSpeed saves
one file per layer; `pipeline_checkpoint.py` maps them back to the GPT's names.

Importing this module imports deepspeed: import it only after `device.select_accelerator`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from deepspeed.pipe import PipelineModule, TiedLayerSpec
from torch import nn
from torch.nn import functional as F

from kubespeed.spec import SpecError, TrainerConfig
from kubespeed_trainer.models.gpt import GPT

TIED_KEY = "embedding"


class Embedding(nn.Module):
    """Token plus position embedding; also the tied output head (`logits`)."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.tok_emb, self.pos_emb, self.drop = gpt.tok_emb, gpt.pos_emb, gpt.drop

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.drop(self.tok_emb(input_ids) + self.pos_emb(positions))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.tok_emb.weight)


def _tied_head(module: Embedding, hidden: torch.Tensor) -> torch.Tensor:
    return module.logits(hidden)


def gpt_pipeline(model: nn.Module, config: TrainerConfig, loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
                 path: str = "config") -> PipelineModule:
    """Lay out an initialised GPT as `deepspeed.pipelineStages` stages (call after init_distributed).

    The last stage computes `loss_fn(logits, labels)`, with the labels each micro batch carries.
    """
    stages = config.deepspeed.pipelineStages
    if not isinstance(model, GPT):
        raise SpecError(f"{path}.deepspeed.pipelineStages", "pipeline parallelism is built for model type gpt")
    if model.config.layers < stages:
        raise SpecError(f"{path}.deepspeed.pipelineStages", f"{stages} stages need at least as many layers, the model has {model.config.layers}")
    blocks: list[nn.Module] = list(model.blocks)
    if model.config.tie_weights:
        first = TiedLayerSpec(TIED_KEY, Embedding, model, tied_weight_attr="tok_emb.weight")
        last = TiedLayerSpec(TIED_KEY, Embedding, model, forward_fn=_tied_head, tied_weight_attr="tok_emb.weight")
    else:
        first, last = Embedding(model), model.head
    layers = [first, *blocks, model.ln_f, last]
    return PipelineModule(
        layers=layers,
        num_stages=stages,
        loss_fn=loss_fn,
        partition_method="type:Block",
        activation_checkpoint_interval=1 if config.deepspeed.activationCheckpointing else 0,
    )

