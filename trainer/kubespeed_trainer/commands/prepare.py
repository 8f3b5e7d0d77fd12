"""`kubespeed prepare CONFIG --out DIR`: tokenize a config's data once into token shards.

Training prepares its data itself (into the checkpoint directory) on first use;
this command does it ahead of time, e.g. into a shared volume, so that a job can
then read it with `data: {format: tokens, train: DIR}` and no pod tokenizes:

    kubespeed prepare config.yaml --out /data/shakespeare-char
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubespeed import wiring
from kubespeed.spec import SpecError
from kubespeed_trainer import data
from kubespeed_trainer.config import load_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubespeed prepare", description="Tokenize a trainer config's data into token shards.")
    parser.add_argument("config", help="trainer config file (its data and training.seqLength are used)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the shards, index.json and tokenizer/")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except SpecError as err:
        print(f"kubespeed prepare: {err}", file=sys.stderr)
        return wiring.EXIT_CONFIG_ERROR.code
    try:
        out = data.prepare_dataset(config.data, None, args.out, seq_length=config.training.seqLength)
    except (OSError, ValueError, UnicodeError) as err:
        print(f"kubespeed prepare: data: {err}", file=sys.stderr)
        return wiring.EXIT_DATA_ERROR.code
    index = data.read_index(out)
    splits = {name: bounds["end"] - bounds["start"] for name, bounds in index["splits"].items()}
    print(f"{out}: vocabulary {index['vocabSize']}, tokens " + ", ".join(f"{k} {v}" for k, v in splits.items()))
    return wiring.EXIT_SUCCESS.code
