"""The LSTM language model of the original design notes: embedding, LSTM, linear head.

When the embedding is tied to the head but the LSTM's hidden width differs from
the embedding width, a bias-free projection maps the LSTM output back to the
embedding width (as AWD-LSTM does), so tying never forces the two widths equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from kubespeed.spec.job import ModelSpec
from kubespeed_trainer.models.gpt import SIZES


@dataclass(kw_only=True)
class LSTMConfig:
    vocab_size: int
    embed_dim: int
    hidden_dim: int
    layers: int
    dropout: float = 0.0
    tie_weights: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def from_spec(spec: ModelSpec, *, vocab_size: int) -> LSTMConfig:
    """Layers and width default to the named size's, so `size: mini` means the same scale for both families."""
    layers, _, embed_dim = SIZES[spec.size]
    embed_dim = spec.embedDim or embed_dim
    return LSTMConfig(vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=spec.hiddenDim or embed_dim,
                      layers=spec.layers or layers, dropout=spec.dropout, tie_weights=spec.tieWeights)


class LSTMLanguageModel(nn.Module):
    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.embed_dim)
        self.drop = nn.Dropout(config.dropout)
        # nn.LSTM applies dropout between layers only; the outer self.drop covers input and output.
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_dim, num_layers=config.layers, batch_first=True,
                            dropout=config.dropout if config.layers > 1 else 0.0)
        needs_projection = config.tie_weights and config.hidden_dim != config.embed_dim
        self.proj = nn.Linear(config.hidden_dim, config.embed_dim, bias=False) if needs_projection else None
        head_in = config.embed_dim if config.tie_weights else config.hidden_dim
        self.head = nn.Linear(head_in, config.vocab_size)
        # PyTorch's word_language_model init: GPT's std 0.02 would feed the LSTM
        # inputs so small that its gates barely see them and learning stalls.
        nn.init.uniform_(self.tok_emb.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if not config.tie_weights:
            nn.init.uniform_(self.head.weight, -0.1, 0.1)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight

    def gradient_checkpointing(self, enabled: bool) -> None:
        """The recurrence keeps no per-block activations worth recomputing; accepted so every model answers the same call."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.drop(self.tok_emb(input_ids)))
        out = self.drop(out)
        if self.proj is not None:
            out = self.proj(out)
        return self.head(out)
