"""Any Hugging Face causal LM, built from a config or loaded from a local directory, returning logits.

Nothing is downloaded: directories are read with `local_files_only`. The
tokenizer decides the vocabulary, so a config's `vocab_size` is replaced by the
tokenizer's, and a loaded model's embeddings grow when the tokenizer has more
ids than the model. They never shrink: many checkpoints pad the vocabulary past
the tokenizer's size (to a multiple of 64 or 128), and cutting those rows would
change the model's shape for nothing. Weights stay in float32; DeepSpeed casts
for mixed precision.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class HFCausalLM(nn.Module):
    """Wraps a `PreTrainedModel` so `forward(input_ids)` returns logits, like the built-in models."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.activation_checkpointing_disable()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def from_config(hf_config: dict[str, Any], *, vocab_size: int) -> HFCausalLM:
    # transformers takes about a second to import, and every rank imports this module; only hf models need it.
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(hf_config)
    model_type = settings.pop("model_type", None)
    if not model_type:
        raise ValueError("model.hfConfig needs a model_type (e.g. llama, gpt2, mistral)")
    settings["vocab_size"] = vocab_size
    config = AutoConfig.for_model(model_type, **settings)
    return HFCausalLM(AutoModelForCausalLM.from_config(config, dtype=torch.float32))


def from_directory(path: str, *, vocab_size: int | None = None) -> HFCausalLM:
    # transformers takes about a second to import, and every rank imports this module; only hf models need it.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    if vocab_size is not None and model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return HFCausalLM(model)
