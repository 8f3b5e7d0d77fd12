"""Checkpoints that are either complete or ignored, and resume from the newest complete one.

Layout of a checkpoint directory (`checkpoint.mountPath`, or `--checkpoint-dir`):

    trainer.yaml, deepspeed.json   the trainer config and the resolved DeepSpeed config of the run
    tokenizer/                     the tokenizer, saved once (sample and export read it)
    data/                          the prepared token shards (see data/prepare.py)
    metrics.jsonl                  rank 0's metrics, one JSON object per line
    step00000100/                  one checkpoint: DeepSpeed's files (model, ZeRO shards,
                                   client state), one `rank<r>.pt` per rank (its RNG states),
                                   and last `complete`
    latest                         the tag of the newest complete checkpoint
    export/                        the final weights as safetensors (checkpoint.exportWeights)

A save goes: every rank writes its part (DeepSpeed's `save_checkpoint`, which ends
in a barrier), then rank 0 writes `complete` into the tag and replaces `latest`
atomically (write a temporary file, fsync, rename). `latest` has DeepSpeed's own
format (the tag as text), but DeepSpeed is told not to write it, so it never names
a checkpoint that a crash left half-written. Rank 0 then deletes all but the
newest `checkpoint.keep` complete checkpoints, and any incomplete leftovers.

Multi-node jobs need the directory on storage every node sees (ReadWriteMany),
as DeepSpeed writes each rank's shards where that rank runs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from kubespeed import wiring

COMPLETE_MARKER = "complete"
LATEST_FILE = "latest"
TRAINER_CONFIG_FILE = "trainer.yaml"
DEEPSPEED_CONFIG_FILE = "deepspeed.json"
TOKENIZER_DIR = "tokenizer"
DATA_DIR = "data"
METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "export"
_TAG = re.compile(r"step(\d+)")


def tag_for(step: int) -> str:
    """Zero-padded so tags sort by step in a directory listing, too; the operator names it in status."""
    return wiring.checkpoint_tag(step)


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


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rank_file(directory: Path, tag: str, rank: int) -> Path:
    return directory / tag / f"rank{rank}.pt"


def save(engine: Any, directory: str | Path, step: int, client_state: dict[str, Any], *, keep: int,
         rank_state: dict[str, Any] | None = None, on_complete: Callable[[str], None] | None = None) -> str:
    """Save a checkpoint from every rank; when this returns, it is complete and `latest` names it.

    Rank 0 calls `on_complete(tag)` as soon as `latest` names the tag, before the closing barrier:
    a peer that dies in that barrier must not hide a checkpoint that is already complete.
    """
    directory = Path(directory)
    tag = tag_for(step)
    rank = dist.get_rank()
    (directory / tag).mkdir(parents=True, exist_ok=True)
    torch.save({"rng": rng_state(), **(rank_state or {})}, _rank_file(directory, tag, rank))
    # Ends with a barrier: once it returns on rank 0, every rank's files are written.
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
    if rank == 0:
        marker = {"step": step, "time": time.time(), "worldSize": dist.get_world_size()}
        write_atomically(directory / tag / COMPLETE_MARKER, json.dumps(marker) + "\n")
        write_atomically(directory / LATEST_FILE, tag)
        if on_complete:
            on_complete(tag)
        prune(directory, keep)
    dist.barrier()
    return tag


def prune(directory: Path, keep: int) -> list[str]:
    """Delete complete checkpoints beyond the newest `keep`, and incomplete ones; returns the deleted tags."""
    complete = complete_tags(directory)
    doomed = complete[:-keep] if keep > 0 else complete
    doomed += [p.name for p in directory.iterdir() if p.is_dir() and step_of(p.name) is not None and p.name not in complete]
    for tag in doomed:
        shutil.rmtree(directory / tag, ignore_errors=True)
    return doomed


def load(engine: Any, directory: str | Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore engine state (weights, optimizer, scheduler) and this rank's RNG; returns (client state, rank state)."""
    directory = Path(directory)
    path, client_state = engine.load_checkpoint(str(directory), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {directory / tag}")
    rank_path = _rank_file(directory, tag, dist.get_rank())
    rank_state: dict[str, Any] = {}
    if rank_path.exists():
        # The world may have changed size since the save; a rank without its own file keeps its fresh RNG.
        rank_state = torch.load(rank_path, weights_only=False)
        set_rng_state(rank_state["rng"])
    return client_state or {}, rank_state


def agreed_resume_tag(directory: str | Path, policy: str) -> str | None:
    """The tag every rank resumes from (rank 0 decides, so all load the same one), or None to start fresh."""
    tag = latest_complete(directory) if dist.get_rank() == 0 and policy != "never" else None
    box = [tag]
    dist.broadcast_object_list(box, src=0)
    tag = box[0]
    if tag is None and policy == "required":
        raise FileNotFoundError(f"checkpoint.resume is required but {directory} holds no complete checkpoint")
    return tag
