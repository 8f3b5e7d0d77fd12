"""Final weights as safetensors plus a config.json, and the way back in.

- gpt: written as a Hugging Face `GPT2LMHeadModel` (same network, see
  `models/gpt_hf.py`), so `AutoModelForCausalLM.from_pretrained(dir)` works.
- hf: `save_pretrained`, so the directory is an ordinary HF model.
- lstm: HF has no such architecture, so config.json has `model_type:
  kubespeed-lstm` and `load_exported(dir)` rebuilds it.

`load_exported` gives back our own module for gpt and lstm (so fine-tuning runs
the same code, pipeline stages included) and the HF wrapper otherwise.
`load_weights` fills an already built model from exported weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kubespeed.spec.job import ModelSpec
from kubespeed_trainer.models import gpt, gpt_hf, hf, lstm

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
LSTM_MODEL_TYPE = "kubespeed-lstm"


def export_hf(model: nn.Module, spec: ModelSpec, vocab_size: int, seq_length: int, out_dir: str | Path, *,
              state_dict: dict[str, torch.Tensor] | None = None, eos_id: int | None = None) -> Path:
    """Write config.json and model.safetensors into out_dir.

    `state_dict` (in the names of `model.state_dict()`) replaces the model's own
    weights: pass the gathered full weights when the engine has them sharded
    (ZeRO-3) or spread over pipeline stages. `eos_id` (the tokenizer's) lets
    HF `generate` stop at the end of a document (gpt; an hf model keeps its own).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    if spec.type == "gpt":
        config = gpt.from_spec(spec, vocab_size=vocab_size, seq_length=seq_length)
        _write(out, gpt_hf.hf_config(config, eos_id=eos_id), gpt_hf.to_hf(state, config))
    elif spec.type == "lstm":
        config = lstm.from_spec(spec, vocab_size=vocab_size)
        weights = {k: v for k, v in state.items() if not (config.tie_weights and k == "head.weight")}
        _write(out, {"model_type": LSTM_MODEL_TYPE, gpt_hf.EXPORT_MARKER: "lstm", **config.to_dict()}, weights)
    elif spec.type == "hf":
        inner = {k.removeprefix("model."): v for k, v in state.items()}
        model.model.save_pretrained(out, state_dict=inner)
    else:
        raise ValueError(f"unknown model type {spec.type!r}")
    return out


def load_exported(directory: str | Path) -> nn.Module:
    """The model an export describes, with its weights, in eval mode."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    kind = config.get(gpt_hf.EXPORT_MARKER)
    if kind == "gpt":
        model: nn.Module = gpt.GPT(gpt_hf.config_from_hf(config))
    elif kind == "lstm":
        fields = {k: config[k] for k in lstm.LSTMConfig.__dataclass_fields__}
        model = lstm.LSTMLanguageModel(lstm.LSTMConfig(**fields))
    else:
        return hf.from_directory(str(directory)).eval()
    load_weights(model, directory)
    return model.eval()


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Fill a built model from exported weights (a directory or one .safetensors file); shapes must match."""
    state = read_safetensors(Path(path))
    if isinstance(model, gpt.GPT) and any(k.startswith("transformer.") for k in state):
        state = gpt_hf.from_hf(state, model.config)
    elif isinstance(model, hf.HFCausalLM) and not state.keys() & model.state_dict().keys():
        state = {f"model.{k}": v for k, v in state.items()}  # saved by save_pretrained: the inner model's names
    _load_allowing_ties(model, state)
    return model


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or of a directory's single or sharded (indexed) weights."""
    if path.is_file():
        return load_file(path)
    if (path / WEIGHTS_INDEX_FILE).exists():
        shards = sorted(set(json.loads((path / WEIGHTS_INDEX_FILE).read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(path / shard))
        return state
    if (path / WEIGHTS_FILE).exists():
        return load_file(path / WEIGHTS_FILE)
    raise FileNotFoundError(f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in {path}")


def _write(out: Path, config: dict, weights: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    # transformers refuses safetensors files whose metadata does not say "pt".
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _load_allowing_ties(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict loading, except that a name missing from `state` is fine when it aliases a loaded tensor (tied weights)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # torch reports shape mismatches this way
        raise ValueError(f"weights do not fit the model: {err}") from err
    aliases: dict[int, set[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        aliases.setdefault(id(tensor), set()).add(name)
    tensors = model.state_dict(keep_vars=True)
    missing = [k for k in result.missing_keys if not (aliases[id(tensors[k])] - {k}) & state.keys()]
    if missing or result.unexpected_keys:
        raise ValueError(f"weights do not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
