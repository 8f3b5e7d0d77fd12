"""Live progress: a rich bar on a terminal, fed by rank 0's metrics endpoint; plain lines otherwise.

The endpoint is the one the operator reads for the job's status, polled a few
times a second: its step count moves every step, where metrics.jsonl gets a line
every `logInterval` steps. The plain lines are metrics.jsonl's own records.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from kubespeed import metrics, wiring

# The trainer's gauges we show (kubespeed.metrics names them), as Snapshot fields.
SHOWN = {"step": "step", "totalSteps": "total", "loss": "loss", "tokensPerSecond": "tokens_per_second", "etaSeconds": "eta_seconds"}


@dataclass(frozen=True)
class Snapshot:
    step: int
    total: int
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


def snapshot(values: dict[str, float]) -> Snapshot | None:
    """The gauges we show, from the trainer's gauges by JSON key; None until the trainer has done a step."""
    shown = {field: value for key, value in values.items() if (field := SHOWN.get(key))}
    if "step" not in shown or "total" not in shown:
        return None
    return Snapshot(step=int(shown.pop("step")), total=int(shown.pop("total")), **shown)


def parse_metrics(text: str) -> Snapshot | None:
    """The gauges we show, from Prometheus text; None until the trainer has done a step."""
    return snapshot(metrics.parse_prometheus(text))


def read_gauges(port: int, timeout: float = 0.5) -> dict[str, float] | None:
    """Rank 0's gauges by JSON key, or None while its endpoint is not up (starting, restarting, done)."""
    url = f"http://127.0.0.1:{port}{wiring.METRICS_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return metrics.parse_prometheus(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def scrape(port: int, timeout: float = 0.5) -> Snapshot | None:
    """Rank 0's gauges we show, or None while its endpoint is not up or before the first step."""
    values = read_gauges(port, timeout)
    return snapshot(values) if values is not None else None


@dataclass
class StepClock:
    """When steps happened in this run: time to the first step, and steps per second after it.

    A resumed run starts at its checkpoint's step (`start_step`), so its first step
    is the first time the step count moves past that.
    """

    start_step: int = 0
    started: float = field(default_factory=time.monotonic)
    first_step_at: float | None = None
    first_step: int | None = None
    last_step_at: float | None = None
    last_step: int | None = None

    def observe(self, step: int, now: float | None = None) -> None:
        if step <= self.start_step or step == self.last_step:
            return
        now = time.monotonic() if now is None else now
        if self.first_step_at is None:
            self.first_step_at, self.first_step = now, step
        self.last_step_at, self.last_step = now, step

    @property
    def seconds_to_first_step(self) -> float | None:
        return None if self.first_step_at is None else self.first_step_at - self.started

    @property
    def steps_per_second(self) -> float | None:
        if self.first_step_at is None or self.last_step_at is None or self.last_step_at <= self.first_step_at:
            return None
        return (self.last_step - self.first_step) / (self.last_step_at - self.first_step_at)


def details(s: Snapshot) -> str:
    """Loss, throughput and ETA, as far as the trainer has published them."""
    parts = []
    if s.loss is not None:
        parts.append(f"loss {s.loss:.4f}")
    if s.tokens_per_second is not None:
        parts.append(f"{s.tokens_per_second:,.0f} tok/s")
    if s.eta_seconds is not None:
        parts.append(f"eta {format_seconds(s.eta_seconds)}")
    return "  ".join(parts)


def describe(s: Snapshot) -> str:
    return "  ".join(filter(None, [f"step {s.step}/{s.total}", details(s)]))


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_record(record: dict) -> str | None:
    """A metrics.jsonl line as people read it; None for kinds not worth a line."""
    kind, step = record.get("kind"), record.get("step")
    if kind == "train":
        return describe(Snapshot(step, record.get("totalSteps", 0), record.get("loss"),
                                 record.get("tokensPerSecond"), record.get("etaSeconds")))
    if kind == "eval":
        return f"step {step}  eval loss {record['evalLoss']:.4f}  perplexity {record['evalPerplexity']:.2f}"
    if kind == "checkpoint":
        return f"step {step}  checkpoint written"
    if kind == "resume":
        return f"resumed from the checkpoint at step {step}"
    if kind == "start" and record.get("inPlaceRestarts"):
        return f"the ranks were restarted in place ({record['inPlaceRestarts']} in this attempt)"
    return None


class LineProgress:
    """A line per train, eval and checkpoint record the trainer writes to metrics.jsonl, for logs
    and pipes (and `--no-progress`): exactly the logged figures, where gauges sampled between
    two steps may pair a step with the previous log's loss."""

    def __init__(self, metrics: Path):
        self.metrics = metrics
        # Lines from earlier runs of the job are not this run's progress.
        self.offset = metrics.stat().st_size if metrics.exists() else 0

    def update(self, snapshot: Snapshot | None) -> None:
        for record in self._new_records():
            line = format_record(record)
            if line:
                print(line, flush=True)

    def _new_records(self) -> list[dict]:
        try:
            with open(self.metrics, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next tick
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def close(self) -> None:
        self.update(None)


class BarProgress:
    """A rich progress bar: step/total, loss, tokens/s and the trainer's own ETA."""

    def __init__(self, job: str):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            transient=False,
        )
        self.task = self.progress.add_task(job, total=None, detail="starting ranks...")
        self.progress.start()

    def update(self, s: Snapshot | None) -> None:
        if s is not None:
            self.progress.update(self.task, completed=s.step, total=s.total, detail=details(s))

    def close(self) -> None:
        self.progress.stop()


def progress_view(job: str, metrics: Path, plain: bool) -> LineProgress | BarProgress:
    if plain or not sys.stdout.isatty():
        return LineProgress(metrics)
    return BarProgress(job)
