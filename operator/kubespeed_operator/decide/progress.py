"""Training progress, from what rank 0's Prometheus endpoint said, for `status.progress` and `status.checkpoint`.

Pods get no API credentials, so the operator reads the trainer's metrics
(`run.scrape`) instead of the trainer writing status. The metric names, and
reading them back, are `kubespeed.metrics`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kubespeed import checkpoints, metrics
from kubespeed.spec.status import Phase
from kubespeed_operator.decide.observed import PodPhase, PodView
from kubespeed_operator.decide.status import parse_time


@dataclass(frozen=True)
class TrainerReading:
    """What rank 0's metrics endpoint said, as far as the job's status uses it."""

    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    checkpoint_step: int | None = None
    in_place_restarts: int | None = None


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def parse(text: str) -> TrainerReading:
    values = metrics.parse_prometheus(text)
    return TrainerReading(
        step=_int(values.get("step")),
        total_steps=_int(values.get("totalSteps")),
        loss=values.get("loss"),
        tokens_per_second=values.get("tokensPerSecond"),
        eta_seconds=values.get("etaSeconds"),
        checkpoint_step=_int(values.get("checkpointStep")),
        in_place_restarts=_int(values.get("inPlaceRestarts")),
    )


def format_eta(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_status(progress: TrainerReading, read_at: str) -> dict:
    """`status.progress`; numbers the CRD keeps as strings are formatted for `kubectl get`."""
    result: dict = {"updateTime": read_at}
    if progress.step is not None:
        result["step"] = progress.step
    if progress.total_steps is not None:
        result["totalSteps"] = progress.total_steps
    if progress.loss is not None:
        result["loss"] = f"{progress.loss:.4f}"
    if progress.tokens_per_second is not None:
        result["tokensPerSecond"] = f"{progress.tokens_per_second:.0f}"
    if progress.eta_seconds is not None:
        result["eta"] = format_eta(progress.eta_seconds)
    return result


def checkpoint_status(progress: TrainerReading, old: dict | None, read_at: str, trainer_layout: bool = True) -> dict | None:
    """`status.checkpoint`: the step of the latest complete checkpoint; its time is when it was first seen.

    Its path is the built-in trainer's tag for the step; a user's program names its own
    (DeepSpeed's `latest` file says which), so it has none here."""
    if progress.checkpoint_step is None or progress.checkpoint_step < 0:
        return old
    if old and old.get("step") == progress.checkpoint_step:
        return old
    named = {"path": checkpoints.tag_for(progress.checkpoint_step)} if trainer_layout else {}
    return {"step": progress.checkpoint_step, **named, "time": read_at}


def finished_status(total_steps: int, old_progress: dict | None, old_checkpoint: dict | None, finished_at: str) -> dict:
    """`status.progress` and `status.checkpoint` once every pod exited 0.

    Rank 0's endpoint ends with its process, so the last reading may predate the
    last steps and the final checkpoint. Exit 0 means the trainer ran every step and
    saved at the end (checkpoint.interval: "and at the end"), so both are known.
    """
    progress = {**(old_progress or {}), "step": total_steps, "totalSteps": total_steps, "eta": format_eta(0), "updateTime": finished_at}
    return {"progress": progress, "checkpoint": checkpoint_status(TrainerReading(checkpoint_step=total_steps), old_checkpoint, finished_at)}


def is_due(old_progress: dict | None, now: datetime, interval: float) -> bool:
    last = parse_time((old_progress or {}).get("updateTime"))
    return last is None or (now - last).total_seconds() >= interval


def rank0_to_read(status: dict, pods: list[PodView], now: datetime, interval: float) -> PodView | None:
    """Rank 0 of the running attempt, when the job's progress is due to be read from it."""
    if status.get("phase") != Phase.RUNNING:
        return None
    rank0 = next((p for p in pods if p.attempt == status.get("attempt") and p.rank == 0), None)
    if rank0 is None or rank0.phase != PodPhase.RUNNING or not rank0.ip:
        return None
    return rank0 if is_due(status.get("progress"), now, interval) else None
