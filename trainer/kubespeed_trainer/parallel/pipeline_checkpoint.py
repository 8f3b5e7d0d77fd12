"""A pipeline checkpoint's per-layer files read back into the built-in GPT's parameter names.

DeepSpeed saves one file per pipeline layer (`layer_<i>-model_states.pt`), in the
layer order `pipeline.py` lays out: 0 the embedding, 1..L the blocks, L+1 the
final layer norm, L+2 the head. Reading them needs torch only, not deepspeed, so
exporting a checkpoint selects no accelerator.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_LAYER_FILE = re.compile(r"layer_(\d+)-.*model_states\.pt")


def is_pipeline_checkpoint(tag_dir: Path) -> bool:
    return any(path.name.startswith("layer_") for path in tag_dir.iterdir())


def state_dict_from_layers(tag_dir: Path, layers: int) -> dict[str, torch.Tensor]:
    """The GPT's state dict from a pipeline checkpoint's per-layer files."""
    prefixes = {0: "", layers + 1: "ln_f.", layers + 2: "head."}
    state: dict[str, torch.Tensor] = {}
    for path in sorted(tag_dir.iterdir()):
        match = _LAYER_FILE.fullmatch(path.name)
        if not match:
            continue
        index = int(match.group(1))
        prefix = prefixes.get(index, f"blocks.{index - 1}.")
        for name, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
            state[prefix + name] = tensor
    if not state:
        raise FileNotFoundError(f"{tag_dir} holds no pipeline layer files")
    return state
