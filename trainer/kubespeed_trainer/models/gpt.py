"""The built-in GPT decoder: GPT-2 style pre-LN blocks, learned positions, GELU(tanh) MLP, biases.

The architecture is exactly GPT-2's so that exported weights load as a
`GPT2LMHeadModel` (see `models/gpt_hf.py`). Attention goes through
`torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel
(flash or memory-efficient) on GPUs and a plain one on CPUs.

The pieces (`tok_emb`, `pos_emb`, `blocks`, `ln_f`, `head`) are attributes so
the engine can lay them out as pipeline stages and checkpoint activations per
block; the model itself knows nothing about how it is sharded.

Named sizes follow GPT-2 (tiny..gpt-125m) and the GPT-3 paper's table
(gpt-350m = Medium, gpt-760m = Large, gpt-1b = XL). Parameter counts without
embeddings are 12·L·d² (+13·L·d): gpt-125m 85M, gpt-350m 302M, gpt-760m 680M,
gpt-1b 1.21B; with a 50,304-token vocabulary tied to the head and 1,024
positions, gpt-1b has 1.31B parameters in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from kubespeed.spec.job import ModelSpec

# name -> (layers, heads, embedDim)
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 2, 64),
    "mini": (4, 4, 128),  # nanoGPT's shakespeare-char recipe for a CPU
    "small": (6, 6, 384),
    "gpt-125m": (12, 12, 768),
    "gpt-350m": (24, 16, 1024),
    "gpt-760m": (24, 16, 1536),
    "gpt-1b": (24, 16, 2048),
}

LAYER_NORM_EPS = 1e-5  # GPT-2's value; the HF export depends on it


@dataclass(kw_only=True)
class GPTConfig:
    vocab_size: int
    block_size: int  # the longest sequence, i.e. rows of the position table
    layers: int
    heads: int
    embed_dim: int
    dropout: float = 0.0
    tie_weights: bool = True

    def __post_init__(self) -> None:
        if self.embed_dim % self.heads:
            raise ValueError(f"embedDim {self.embed_dim} is not a multiple of heads {self.heads}")


def config_for(size: str, *, vocab_size: int, block_size: int, layers: int | None = None, heads: int | None = None,
               embed_dim: int | None = None, dropout: float = 0.0, tie_weights: bool = True) -> GPTConfig:
    """A named recipe with optional overrides; unknown names raise with the known ones listed."""
    if size not in SIZES:
        raise ValueError(f"unknown GPT size {size!r}; known: {', '.join(SIZES)}")
    base_layers, base_heads, base_dim = SIZES[size]
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, layers=layers or base_layers,
                     heads=heads or base_heads, embed_dim=embed_dim or base_dim, dropout=dropout, tie_weights=tie_weights)


def from_spec(spec: ModelSpec, *, vocab_size: int, seq_length: int) -> GPTConfig:
    return config_for(spec.size, vocab_size=vocab_size, block_size=seq_length, layers=spec.layers, heads=spec.heads,
                      embed_dim=spec.embedDim, dropout=spec.dropout, tie_weights=spec.tieWeights)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        q, k, v = (t.view(batch, time, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(batch, time, dim)))


# 0.5·(1 + tanh(z)) = sigmoid(2z): GPT-2's GELU, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), is x·sigmoid(2√(2/π)·(...)).
_GELU_SIGMOID_SCALE = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU (the tanh approximation); under torch.compile written through the sigmoid, the same function.

    TorchInductor's CPU code computes tanh with Sleef's accurate vector tanh,
    which made this one elementwise op a fifth of a small model's compiled
    step; the sigmoid form compiles to its fast exp. Eager mode keeps torch's
    own GELU kernel, one op forward and one backward.
    """
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(_GELU_SIGMOID_SCALE * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.embed_dim, 4 * config.embed_dim)
        self.proj = nn.Linear(4 * config.embed_dim, config.embed_dim)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(gelu_tanh(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.embed_dim)
        self.pos_emb = nn.Embedding(config.block_size, config.embed_dim)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(config.embed_dim, config.vocab_size, bias=False)
        self.checkpoint_activations = False
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2·layers) so the
        # residual stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.layers))
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.checkpoint_activations = enabled

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.drop(self.tok_emb(input_ids) + self.pos_emb(positions))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens exceeds the model's {self.config.block_size} positions")
        x = self.embed(input_ids)
        for block in self.blocks:
            if self.checkpoint_activations and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.head(self.ln_f(x))


def non_embedding_parameters(config: GPTConfig) -> int:
    """Parameters in the blocks and the final norm: what scales the compute per token."""
    d = config.embed_dim
    return config.layers * (12 * d * d + 13 * d) + 2 * d


def flops_per_token(config: GPTConfig, seq_length: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + 12·L·d·T, as in the PaLM paper's MFU.

    N counts every weight a token's compute touches: the blocks and the output
    head (the token embedding itself is a lookup, but the tied head is a matmul);
    position embeddings are a lookup and are left out. 12·L·d·T is attention's
    QK^T and AV products, which have no parameters.
    """
    n = non_embedding_parameters(config) + config.vocab_size * config.embed_dim
    return 6.0 * n + 12.0 * config.layers * config.embed_dim * seq_length
