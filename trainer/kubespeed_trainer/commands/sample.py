"""`kubespeed sample DIR`: generate text from a checkpoint directory or exported weights.

    kubespeed sample /tmp/run --prompt "ROMEO:" --tokens 200
    kubespeed sample /tmp/run/export --temperature 0.8 --top-k 40 --seed 7

DIR is a kubespeed checkpoint directory (the newest complete checkpoint, or
`--tag`) or an export (config.json, model.safetensors, tokenizer/). Sampling is
plain autoregressive decoding on the CPU: temperature, optional top-k, and the
context cropped to the model's positions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from kubespeed import checkpoints, wiring
from kubespeed_trainer import models
from kubespeed_trainer.data.tokenizer import Tokenizer, load_tokenizer
from kubespeed_trainer.engine.checkpoint_weights import build_from_checkpoint


@torch.no_grad()
def generate(model: torch.nn.Module, ids: list[int], *, tokens: int, temperature: float, top_k: int | None,
             context: int, generator: torch.Generator) -> list[int]:
    """`ids` followed by `tokens` sampled tokens."""
    out = torch.tensor([ids], dtype=torch.long)
    for _ in range(tokens):
        logits = model(out[:, -context:])[:, -1, :].float()
        if temperature <= 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        out = torch.cat([out, next_id], dim=1)
    return out[0].tolist()


def load(directory: Path, tag: str | None) -> tuple[torch.nn.Module, Tokenizer, int]:
    """(model, tokenizer, context length) from a checkpoint directory or an export."""
    if (directory / checkpoints.TRAINER_CONFIG_FILE).is_file():
        model, config, tokenizer = build_from_checkpoint(directory, tag)
        return model, tokenizer, config.training.seqLength
    model = models.load_exported(directory)
    config = getattr(model, "config", None)
    context = getattr(config, "block_size", None) or getattr(config, "max_position_embeddings", None) or 1024
    return model, load_tokenizer(directory / checkpoints.TOKENIZER_DIR), context


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubespeed sample", description="Generate text from a checkpoint or exported weights.")
    parser.add_argument("directory", type=Path, help="checkpoint directory or export directory")
    parser.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    parser.add_argument("--prompt", default="", help="text to continue (default: start from the end-of-text token)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 decodes greedily")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    try:
        model, tokenizer, context = load(args.directory, args.tag)
    except (FileNotFoundError, ValueError) as err:
        print(f"kubespeed sample: {err}", file=sys.stderr)
        return wiring.EXIT_DATA_ERROR.code
    prompt = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eos_id]
    ids = generate(model, prompt, tokens=args.tokens, temperature=args.temperature, top_k=args.top_k,
                   context=context, generator=torch.Generator().manual_seed(args.seed))
    print(tokenizer.decode(ids if args.prompt else ids[1:]))
    return wiring.EXIT_SUCCESS.code
