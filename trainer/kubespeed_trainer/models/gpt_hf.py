"""The built-in GPT <-> Hugging Face `GPT2LMHeadModel`: the same network under other names.

Our blocks are GPT-2's exactly (pre-LN, learned positions, GELU(tanh), biases,
LayerNorm eps 1e-5), so export is a renaming plus one detail: GPT-2 stores its
linear layers as `Conv1D` with the weight transposed ([in, out]).
"""

from __future__ import annotations

from typing import Any

import torch

from kubespeed_trainer.models.gpt import LAYER_NORM_EPS, GPTConfig

# Marks a config.json written by us, so `load_exported` gives back our GPT rather than HF's.
EXPORT_MARKER = "kubespeed_model"

# (our name, HF name, transposed) for each block; HF prefixes `transformer.h.<i>.`.
_BLOCK_PARAMS = [
    ("ln_1.weight", "ln_1.weight", False),
    ("ln_1.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.proj.weight", "attn.c_proj.weight", True),
    ("attn.proj.bias", "attn.c_proj.bias", False),
    ("ln_2.weight", "ln_2.weight", False),
    ("ln_2.bias", "ln_2.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True),
    ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True),
    ("mlp.proj.bias", "mlp.c_proj.bias", False),
]
_TOP_PARAMS = [
    ("tok_emb.weight", "transformer.wte.weight"),
    ("pos_emb.weight", "transformer.wpe.weight"),
    ("ln_f.weight", "transformer.ln_f.weight"),
    ("ln_f.bias", "transformer.ln_f.bias"),
]


def hf_config(config: GPTConfig, *, eos_id: int | None = None) -> dict[str, Any]:
    """config.json for `GPT2LMHeadModel`; dropout carried over, attention scaled as GPT-2 does by default.

    GPT-2 uses one id for begin and end of text; without ours, HF's default
    (50256) would point outside a small vocabulary.
    """
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.embed_dim,
        "n_layer": config.layers,
        "n_head": config.heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        EXPORT_MARKER: "gpt",
    }


def config_from_hf(config: dict[str, Any]) -> GPTConfig:
    return GPTConfig(vocab_size=config["vocab_size"], block_size=config["n_positions"], layers=config["n_layer"],
                     heads=config["n_head"], embed_dim=config["n_embd"], dropout=config.get("resid_pdrop", 0.0),
                     tie_weights=config.get("tie_word_embeddings", True))


def to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> GPT-2's; a tied head is stored once, as HF expects."""
    out = {hf: state[ours] for ours, hf in _TOP_PARAMS}
    for i in range(config.layers):
        for ours, hf, transposed in _BLOCK_PARAMS:
            tensor = state[f"blocks.{i}.{ours}"]
            out[f"transformer.h.{i}.{hf}"] = tensor.t() if transposed else tensor
    if not config.tie_weights:
        out["lm_head.weight"] = state["head.weight"]
    return {name: tensor.detach().contiguous() for name, tensor in out.items()}


def from_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """GPT-2's state dict -> ours (the inverse of `to_hf`); refuses weights of another depth."""
    expected = {hf for _, hf in _TOP_PARAMS} | {f"transformer.h.{i}.{hf}" for i in range(config.layers) for _, hf, _ in _BLOCK_PARAMS}
    missing = sorted(expected - state.keys())
    extra = sorted(k for k in state.keys() - expected if k != "lm_head.weight")
    if missing or extra:
        raise ValueError(f"GPT-2 weights do not fit a {config.layers}-layer GPT: missing {missing[:3]}, unexpected {extra[:3]}")
    out = {ours: state[hf] for ours, hf in _TOP_PARAMS}
    for i in range(config.layers):
        for ours, hf, transposed in _BLOCK_PARAMS:
            tensor = state[f"transformer.h.{i}.{hf}"]
            out[f"blocks.{i}.{ours}"] = tensor.t().contiguous() if transposed else tensor
    out["head.weight"] = out["tok_emb.weight"] if config.tie_weights else state["lm_head.weight"]
    return out
