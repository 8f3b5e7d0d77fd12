"""`kubespeed export`: a checkpoint's weights as safetensors with a config Hugging Face can load.

    kubespeed export CHECKPOINT_DIR                       # newest complete checkpoint -> CHECKPOINT_DIR/export
    kubespeed export CHECKPOINT_DIR --tag step00000200 --out /tmp/model

The result loads with `transformers.AutoModelForCausalLM.from_pretrained(out)`
(built-in GPT as GPT2LMHeadModel, see models/export.py); the tokenizer is copied
to `out/tokenizer/` (`kubespeed_trainer.data.tokenizer.load_tokenizer` reads it).
How the weights are read from each kind of checkpoint: engine/checkpoint_weights.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubespeed import checkpoints, wiring
from kubespeed.spec import SpecError
from kubespeed_trainer.engine.checkpoint_weights import export_checkpoint


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
