"""Models from the spec: the built-in GPT, any Hugging Face causal LM, and the LSTM language model.

Every model maps `input_ids` [B, T] to logits [B, T, V]; the objective computes
the loss. `export_hf` / `load_exported` / `load_weights` live in `models/export.py`.
"""

from __future__ import annotations

from torch import nn

from kubespeed.spec.job import ModelSpec
from kubespeed_trainer.models import gpt, hf, lstm
from kubespeed_trainer.models.export import export_hf, load_exported, load_weights

__all__ = ["build_model", "count_parameters", "estimate_flops_per_token", "export_hf", "load_exported", "load_weights"]


def build_model(spec: ModelSpec, *, vocab_size: int, seq_length: int) -> nn.Module:
    """A freshly initialised model (or a local HF model's weights); seed torch first for repeatable weights."""
    if spec.type == "gpt":
        return gpt.GPT(gpt.from_spec(spec, vocab_size=vocab_size, seq_length=seq_length))
    if spec.type == "lstm":
        return lstm.LSTMLanguageModel(lstm.from_spec(spec, vocab_size=vocab_size))
    if spec.type == "hf":
        if spec.path:
            return hf.from_directory(spec.path, vocab_size=vocab_size)
        return hf.from_config(spec.hfConfig or {}, vocab_size=vocab_size)
    raise ValueError(f"unknown model type {spec.type!r}")


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied head counts once); ZeRO-3 partitioned ones count at full size (`ds_numel`)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def estimate_flops_per_token(model: nn.Module, spec: ModelSpec, *, vocab_size: int, seq_length: int) -> float:
    """Training FLOPs per token for MFU: the GPT formula with attention for gpt, 6N for the others."""
    if spec.type == "gpt":
        return gpt.flops_per_token(gpt.from_spec(spec, vocab_size=vocab_size, seq_length=seq_length), seq_length)
    return 6.0 * count_parameters(model)


