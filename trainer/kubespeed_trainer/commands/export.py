"""`kubespeed export`: a checkpoint's weights as safetensors with a config Hugging Face can load.

    kubespeed export CHECKPOINT_DIR                       # newest complete checkpoint -> CHECKPOINT_DIR/export
    kubespeed export CHECKPOINT_DIR --tag step00000200 --out /tmp/model

The result loads with `transformers.AutoModelForCausalLM.from_pretrained(out)`
(built-in GPT as GPT2LMHeadModel, see models/export.py); the tokenizer is copied
to `out/tokenizer/` (`kubespeed_trainer.data.tokenizer.load_tokenizer` reads it).

The weights are read from the checkpoint files, not from a live engine, so the
same code serves the end of training and a later export:
- ZeRO stage 1-3: DeepSpeed's `zero_to_fp32` rebuilds the fp32 master weights from
  the optimizer shards (exact fp32, also after bf16/fp16 training);
- pipeline stages: the per-layer files, mapped back to the GPT's names;
- ZeRO stage 0: the module weights DeepSpeed saved (in the training precision),
  cast to fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path

import torch

from kubespeed import checkpoints, wiring
from kubespeed.spec import SpecError, TrainerConfig, parse_trainer_config
from kubespeed.spec.job import ModelSpec


def load_run_config(directory: Path) -> TrainerConfig:
    import yaml

    path = directory / checkpoints.TRAINER_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a kubespeed checkpoint directory ({checkpoints.TRAINER_CONFIG_FILE} missing)")
    return parse_trainer_config(yaml.safe_load(path.read_text()), str(path))


def checkpoint_state_dict(directory: Path, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights of one checkpoint, in the model's own parameter names."""
    tag_dir = directory / tag
    if not checkpoints.is_complete(directory, tag):
        raise FileNotFoundError(f"{tag_dir} is not a complete checkpoint")
    config = load_run_config(directory)
    ds_config = json.loads((directory / checkpoints.DEEPSPEED_CONFIG_FILE).read_text())
    if any(p.name.startswith("layer_") for p in tag_dir.iterdir()):
        from kubespeed_trainer.models import gpt
        from kubespeed_trainer.parallel.pipeline import state_dict_from_layers

        layers = config.model.layers or gpt.SIZES[config.model.size][0]
        state = state_dict_from_layers(tag_dir, layers)
    elif ds_config.get("zero_optimization", {}).get("stage", 0) > 0:
        from kubespeed_trainer.engine import device

        if "deepspeed" not in sys.modules:
            device.select_accelerator(gpu=False)  # reading files needs no accelerator
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # zero_to_fp32 reports its progress on stdout, which `kubespeed sample` keeps for the text.
        with contextlib.redirect_stdout(sys.stderr):
            state = dict(get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag))
    else:
        state = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {name: tensor.float() for name, tensor in state.items()}


def build_from_checkpoint(directory: Path, tag: str | None = None) -> tuple[torch.nn.Module, TrainerConfig, object]:
    """(model with the checkpoint's weights, its trainer config, its tokenizer)."""
    from kubespeed_trainer import models
    from kubespeed_trainer.data.tokenizer import load_tokenizer

    tag = tag or checkpoints.latest_complete(directory)
    if tag is None:
        raise FileNotFoundError(f"{directory} holds no complete checkpoint")
    config = load_run_config(directory)
    tokenizer = load_tokenizer(directory / checkpoints.TOKENIZER_DIR)
    model = models.build_model(config.model, vocab_size=tokenizer.vocab_size, seq_length=config.training.seqLength)
    load_state(model, checkpoint_state_dict(directory, tag))
    return model.eval(), config, tokenizer


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict, except that a tied head may be absent from (or duplicated in) the saved weights."""
    result = model.load_state_dict(state, strict=False)
    tied = {"head.weight"} if getattr(getattr(model, "config", None), "tie_weights", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint weights do not fit the model: missing {sorted(missing)[:5]}, unexpected {result.unexpected_keys[:5]}")


def state_dict_from(source: Path, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Weights to start a fine-tuning run from: a checkpoint directory or exported weights."""
    from kubespeed_trainer import models

    if (source / checkpoints.TRAINER_CONFIG_FILE).is_file():
        tag = checkpoints.latest_complete(source)
        if tag is None:
            raise FileNotFoundError(f"{source} holds no complete checkpoint")
        return checkpoint_state_dict(source, tag)
    exported = models.load_exported(source)
    return exported.state_dict()


def export_checkpoint(directory: Path, tag: str | None, out: Path) -> Path:
    from kubespeed_trainer import models

    model, config, tokenizer = build_from_checkpoint(directory, tag)
    if out.exists():
        shutil.rmtree(out)
    models.export_hf(model, config.model, tokenizer.vocab_size, config.training.seqLength, out, eos_id=tokenizer.eos_id)
    tokenizer.save(out / checkpoints.TOKENIZER_DIR)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubespeed export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint_dir", type=Path, help="a kubespeed checkpoint directory")
    parser.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    parser.add_argument("--out", type=Path, help="output directory (default: CHECKPOINT_DIR/export)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint_dir, args.tag, args.out or args.checkpoint_dir / checkpoints.EXPORT_DIR)
    except (FileNotFoundError, SpecError, ValueError) as err:
        print(f"kubespeed export: {err}", file=sys.stderr)
        return wiring.EXIT_DATA_ERROR.code
    print(out)
    return wiring.EXIT_SUCCESS.code
