"""Checkpoints that are either complete or ignored, and resume from the newest complete one.

The directory's layout is `kubespeed.checkpoints`'s. A save goes: every rank
writes its part (DeepSpeed's `save_checkpoint`, which ends in a barrier), then rank 0 writes `complete` into the tag and replaces `latest`
atomically (write a temporary file, fsync, rename). `latest` has DeepSpeed's own
format (the tag as text), but DeepSpeed is told not to write it, so it never names
a checkpoint that a crash left half-written. Rank 0 then deletes all but the
newest `checkpoint.keep` complete checkpoints, and any incomplete leftovers.

Multi-node jobs need the directory on storage every node sees (ReadWriteMany),
as DeepSpeed writes each rank's shards where that rank runs.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from kubespeed.checkpoints import COMPLETE_MARKER, LATEST_FILE, complete_tags, latest_complete, step_of, tag_for, write_atomically


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


def save(engine: Any, directory: str | Path, step: int, client_state: dict[str, Any], *, keep: int, data_parallel_size: int,
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
        # The data-parallel size tells the next run whether it must convert the checkpoint (engine.reshard).
        marker = {"step": step, "time": time.time(), "worldSize": dist.get_world_size(), "dataParallelSize": data_parallel_size}
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


def load(engine: Any, directory: str | Path, tag: str, universal: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore engine state (weights, optimizer, scheduler) and this rank's RNG; returns (client state, rank state).

    `universal` (engine.reshard's `prepare`) names the converted copy DeepSpeed loads instead.
    """
    directory = Path(directory)
    load_dir, load_tag = (universal["loadDir"], universal["tag"]) if universal else (str(directory), tag)
    path, client_state = engine.load_checkpoint(load_dir, tag=load_tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {Path(load_dir) / load_tag}")
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
