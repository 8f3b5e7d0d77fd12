"""Resume at another data-parallel size: DeepSpeed's universal checkpoint, converted once per checkpoint.

A ZeRO stage 1-3 checkpoint holds the optimizer state (and, at stage 3, the weights)
in one shard per data-parallel rank of the run that saved it; DeepSpeed loads it
back only into the same number of ranks. When the size changed (a resize: more or
fewer nodes), rank 0 of the new run converts the checkpoint with DeepSpeed's
`ds_to_universal` into `<tag>/universal/` (one fp32 file per parameter and optimizer
moment, no ranks) while the others wait, and every rank loads that with
`checkpoint.load_universal`. The conversion is kept beside the checkpoint (and pruned
with it), marked `complete` last, so a crash during it is redone and a second resize
from the same checkpoint reuses it.

ZeRO stage 0 needs none of this: every rank saves and loads the whole optimizer
(DeepSpeed's `mp_rank_00_model_states.pt`), whatever the number of ranks.

`convert` imports deepspeed: call it only after `device.select_accelerator`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from kubespeed import checkpoints


def saved_data_parallel_size(directory: Path, tag: str, pipeline_stages: int) -> int | None:
    """The data-parallel size of the run that saved `tag`, from its `complete` marker; None if it does not say.

    Markers written before the size was recorded have the world size, which the (unchanging) pipeline stages divide.
    """
    try:
        marker = json.loads((directory / tag / checkpoints.COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if "dataParallelSize" in marker:
        return int(marker["dataParallelSize"])
    return int(marker["worldSize"]) // pipeline_stages if "worldSize" in marker else None


def needs_universal(zero_stage: int, saved_size: int | None, size: int) -> bool:
    return zero_stage > 0 and saved_size is not None and saved_size != size


def convert(directory: Path, tag: str) -> tuple[Path, float]:
    """`<tag>/universal/`, converted now unless a complete one is there; (its path, seconds spent). Rank 0 only."""
    target = directory / tag / checkpoints.UNIVERSAL_DIR
    if checkpoints.is_complete(directory / tag, checkpoints.UNIVERSAL_DIR):
        return target, 0.0
    # What a crash left half-written is started over.
    shutil.rmtree(target, ignore_errors=True)
    from deepspeed.checkpoint import ds_to_universal

    started = time.perf_counter()
    # One worker: the conversion runs in this rank's process, with no pool of processes to outlive it.
    # inject_missing_state: the converter asks for the `universal_checkpoint_info` that Megatron-style models carry
    # (how tensor-parallel slices merge); kubespeed's models have no tensor parallelism, so its bare version is all.
    args = argparse.Namespace(input_folder=str(directory / tag), output_folder=str(target), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    # ds_to_universal reports its progress on stdout, which is the metrics' and the launcher's.
    with contextlib.redirect_stdout(sys.stderr):
        ds_to_universal.main(args)
    seconds = time.perf_counter() - started
    checkpoints.write_atomically(target / checkpoints.COMPLETE_MARKER, json.dumps({"seconds": seconds}) + "\n")
    return target, seconds


def prepare(directory: Path, tag: str, zero_stage: int, pipeline_stages: int, size: int) -> dict[str, Any] | None:
    """Before the engine is built: where to load `tag` from when it was saved at another data-parallel size.

    Returns None when the checkpoint loads as it is, else {"loadDir", "tag", "savedSize", "seconds"}:
    rank 0 has converted it (every rank waits for that here).
    """
    saved = saved_data_parallel_size(directory, tag, pipeline_stages)
    if not needs_universal(zero_stage, saved, size):
        return None
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            _, seconds = convert(directory, tag)
            box = [seconds]
        except Exception as err:  # noqa: BLE001 - every rank must learn that the conversion failed, or they wait forever
            box = [f"{type(err).__name__}: {err}"]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], str):
        raise RuntimeError(f"converting checkpoint {directory / tag} (saved by {saved} data-parallel ranks) for {size} "
                           f"failed: {box[0]}")
    return {"loadDir": str(directory / tag), "tag": checkpoints.UNIVERSAL_DIR, "savedSize": saved, "seconds": box[0]}
