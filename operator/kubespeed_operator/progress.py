"""Training progress from rank 0's Prometheus endpoint, for `status.progress` and `status.checkpoint`.

Pods get no API credentials, so the operator reads the trainer's metrics
(http://<rank 0 pod IP>:METRICS_PORT/metrics) instead of the trainer writing
status. The metric names are the trainer's (kubespeed_trainer.metrics); the
text format is parsed here so the operator never imports the trainer.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from kubespeed import wiring
from kubespeed_operator.status import parse_time

STEP = "kubespeed_step"
TOTAL_STEPS = "kubespeed_total_steps"
LOSS = "kubespeed_loss"
TOKENS_PER_SECOND = "kubespeed_tokens_per_second"
ETA_SECONDS = "kubespeed_eta_seconds"
CHECKPOINT_STEP = "kubespeed_checkpoint_step"
READ_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    checkpoint_step: int | None = None


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_samples(text: str) -> dict[str, float]:
    """Prometheus text format -> {metric name: value}; the first sample of a name wins, labels are ignored."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line.strip())
        if not match or match.group(1) in samples:
            continue
        try:
            samples[match.group(1)] = float(match.group(3))
        except ValueError:
            continue
    return samples


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _int(value: float | None) -> int | None:
    value = _finite(value)
    return int(value) if value is not None else None


def parse(text: str) -> Progress:
    samples = parse_samples(text)
    return Progress(
        step=_int(samples.get(STEP)),
        total_steps=_int(samples.get(TOTAL_STEPS)),
        loss=_finite(samples.get(LOSS)),
        tokens_per_second=_finite(samples.get(TOKENS_PER_SECOND)),
        eta_seconds=_finite(samples.get(ETA_SECONDS)),
        checkpoint_step=_int(samples.get(CHECKPOINT_STEP)),
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


def progress_status(progress: Progress, read_at: str) -> dict:
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


def checkpoint_status(progress: Progress, old: dict | None, read_at: str) -> dict | None:
    """`status.checkpoint`: the step of the latest complete checkpoint; its time is when it was first seen."""
    if progress.checkpoint_step is None or progress.checkpoint_step < 0:
        return old
    if old and old.get("step") == progress.checkpoint_step:
        return old
    return {"step": progress.checkpoint_step, "path": wiring.checkpoint_tag(progress.checkpoint_step), "time": read_at}


def finished_status(total_steps: int, old_progress: dict | None, old_checkpoint: dict | None, finished_at: str) -> dict:
    """`status.progress` and `status.checkpoint` once every pod exited 0.

    Rank 0's endpoint ends with its process, so the last reading may predate the
    last steps and the final checkpoint. Exit 0 means the trainer ran every step and
    saved at the end (checkpoint.interval: "and at the end"), so both are known.
    """
    progress = {**(old_progress or {}), "step": total_steps, "totalSteps": total_steps, "eta": format_eta(0), "updateTime": finished_at}
    return {"progress": progress, "checkpoint": checkpoint_status(Progress(checkpoint_step=total_steps), old_checkpoint, finished_at)}


def metrics_url(pod_ip: str) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{wiring.METRICS_PORT}{wiring.METRICS_PATH}"


async def read(session: aiohttp.ClientSession, pod_ip: str) -> Progress | None:
    """Rank 0's progress, or None when its endpoint cannot be read (not up yet, restarting, unreachable)."""
    try:
        timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT_SECONDS)
        async with session.get(metrics_url(pod_ip), timeout=timeout) as response:
            if response.status != 200:
                return None
            return parse(await response.text())
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, UnicodeDecodeError):
        return None


def is_due(old_progress: dict | None, now: datetime, interval: float) -> bool:
    last = parse_time((old_progress or {}).get("updateTime"))
    return last is None or (now - last).total_seconds() >= interval
