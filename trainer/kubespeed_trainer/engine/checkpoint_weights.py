"""A run's weights read back from its checkpoint files: to export them, to sample from them, to fine-tune from them.

The weights are read from the files, not from a live engine, so the same code
serves the end of training and a later `kubespeed export`:
- ZeRO stage 1-3: DeepSpeed's `zero_to_fp32` rebuilds the fp32 master weights from
  the optimizer shards (exact fp32, also after bf16/fp16 training);
- pipeline stages: the per-layer files, mapped back to the GPT's names;
- ZeRO stage 0: the module weights DeepSpeed saved (in the training precision),
  cast to fp32.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import torch

from kubespeed import checkpoints
from kubespeed.spec import TrainerConfig
from kubespeed_trainer import models
from kubespeed_trainer.config import load_run_config
from kubespeed_trainer.data.tokenizer import Tokenizer, load_tokenizer
from kubespeed_trainer.engine import device
from kubespeed_trainer.models import gpt
from kubespeed_trainer.parallel import pipeline_checkpoint


def checkpoint_state_dict(directory: Path, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights of one checkpoint, in the model's own parameter names."""
    tag_dir = directory / tag
    if not checkpoints.is_complete(directory, tag):
        raise FileNotFoundError(f"{tag_dir} is not a complete checkpoint")
    config = load_run_config(directory)
    ds_config = json.loads((directory / checkpoints.DEEPSPEED_CONFIG_FILE).read_text())
    if pipeline_checkpoint.is_pipeline_checkpoint(tag_dir):
        layers = config.model.layers or gpt.SIZES[config.model.size][0]
        state = pipeline_checkpoint.state_dict_from_layers(tag_dir, layers)
    elif ds_config.get("zero_optimization", {}).get("stage", 0) > 0:
        if "deepspeed" not in sys.modules:
            device.select_accelerator(gpu=False)  # reading files needs no accelerator
        # deepspeed picks its accelerator when first imported, so only after the line above.
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # zero_to_fp32 reports its progress on stdout, which `kubespeed sample` keeps for the text.
        with contextlib.redirect_stdout(sys.stderr):
            state = dict(get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag))
    else:
        state = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {name: tensor.float() for name, tensor in state.items()}


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict, except that a tied head may be absent from (or duplicated in) the saved weights."""
    result = model.load_state_dict(state, strict=False)
    tied = {"head.weight"} if getattr(getattr(model, "config", None), "tie_weights", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint weights do not fit the model: missing {sorted(missing)[:5]}, unexpected {result.unexpected_keys[:5]}")


def build_from_checkpoint(directory: Path, tag: str | None = None) -> tuple[torch.nn.Module, TrainerConfig, Tokenizer]:
    """(model with the checkpoint's weights, its trainer config, its tokenizer); the newest complete checkpoint unless `tag`."""
    tag = tag or checkpoints.latest_complete(directory)
    if tag is None:
        raise FileNotFoundError(f"{directory} holds no complete checkpoint")
    config = load_run_config(directory)
    tokenizer = load_tokenizer(directory / checkpoints.TOKENIZER_DIR)
    model = models.build_model(config.model, vocab_size=tokenizer.vocab_size, seq_length=config.training.seqLength)
    load_state(model, checkpoint_state_dict(directory, tag))
    return model.eval(), config, tokenizer


def state_dict_from(source: Path) -> dict[str, torch.Tensor]:
    """Weights to start a fine-tuning run from: a checkpoint directory (its newest complete checkpoint) or exported weights."""
    if (source / checkpoints.TRAINER_CONFIG_FILE).is_file():
        tag = checkpoints.latest_complete(source)
        if tag is None:
            raise FileNotFoundError(f"{source} holds no complete checkpoint")
        return checkpoint_state_dict(source, tag)
    return models.load_exported(source).state_dict()


def export_checkpoint(directory: Path, tag: str | None, out: Path) -> Path:
    """A checkpoint as safetensors, a config Hugging Face loads, and its tokenizer in `out/tokenizer/`; `out` is replaced."""
    model, config, tokenizer = build_from_checkpoint(directory, tag)
    if out.exists():
        shutil.rmtree(out)
    models.export_hf(model, config.model, tokenizer.vocab_size, config.training.seqLength, out, eos_id=tokenizer.eos_id)
    tokenizer.save(out / checkpoints.TOKENIZER_DIR)
    return out
