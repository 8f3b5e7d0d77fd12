"""The layout of a checkpoint directory, and which checkpoints in it are complete; no torch.

Layout of a checkpoint directory (`checkpoint.mountPath`, or `--checkpoint-dir`):

    trainer.yaml, deepspeed.json   the trainer config and the resolved DeepSpeed config of the run
    tokenizer/                     the tokenizer, saved once (sample and export read it)
    data/                          the prepared token shards
    metrics.jsonl                  rank 0's metrics, one JSON object per line
    step00000100/                  one checkpoint: DeepSpeed's files (model, ZeRO shards,
                                   client state), one `rank<r>.pt` per rank (its RNG states),
                                   and last `complete`
      universal/                   the same checkpoint converted for another data-parallel size
                                   (DeepSpeed's universal format; a resize writes it), `complete` last
    latest                         the tag of the newest complete checkpoint
    export/                        the final weights as safetensors (checkpoint.exportWeights)
    compile-cache/                 TorchInductor's compiled kernels (deepspeed.compile), reused by the next run

The trainer writes it (kubespeed_trainer's checkpoint module: a checkpoint is
complete once `complete` is in its tag and `latest` names it); the operator names
checkpoints in the job's status and `kubespeed local` reads which one a run resumes
from, both without loading torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

COMPLETE_MARKER = "complete"
LATEST_FILE = "latest"
TRAINER_CONFIG_FILE = "trainer.yaml"
DEEPSPEED_CONFIG_FILE = "deepspeed.json"
TOKENIZER_DIR = "tokenizer"
DATA_DIR = "data"
METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "export"
COMPILE_CACHE_DIR = "compile-cache"
UNIVERSAL_DIR = "universal"
_TAG = re.compile(r"step(\d+)")


def tag_for(step: int) -> str:
    """The folder of step `step`'s checkpoint; zero-padded so tags sort by step in a directory listing too."""
    return f"step{step:08d}"


def step_of(tag: str) -> int | None:
    match = _TAG.fullmatch(tag)
    return int(match.group(1)) if match else None


def is_complete(directory: Path, tag: str) -> bool:
    return (directory / tag / COMPLETE_MARKER).is_file()


def complete_tags(directory: str | Path) -> list[str]:
    """Complete checkpoints, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    tags = [p.name for p in directory.iterdir() if p.is_dir() and step_of(p.name) is not None and is_complete(directory, p.name)]
    return sorted(tags, key=lambda t: step_of(t) or 0)


def latest_complete(directory: str | Path) -> str | None:
    """The tag `latest` names if it is complete, else the newest complete tag, else None."""
    directory = Path(directory)
    try:
        named = (directory / LATEST_FILE).read_text().strip()
    except OSError:
        named = ""
    if named and is_complete(directory, named):
        return named
    tags = complete_tags(directory)
    return tags[-1] if tags else None


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old content or the new, never a part: write aside, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
