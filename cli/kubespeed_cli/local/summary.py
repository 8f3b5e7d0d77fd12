"""What a run did, from the trainer's metrics.jsonl and the step clock: summary.json and the lines printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubespeed.metrics import STARTUP_PHASES
from kubespeed_cli.local.progress import format_seconds

# How people read each start-up phase, `launch` first: kubespeed local itself and the pod's
# launcher, until rank 0's process started; the rest are rank 0's (kubespeed.metrics).
PHASE_NAMES = {"launch": "launch", "imports": "imports", "processGroup": "ranks joined", "data": "data",
               "engine": "engine", "firstStep": "first step"}


def history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, in step order. A resumed run logs again the steps after its
    checkpoint; the later lines win, so the history is the run that the weights came from."""
    merged: dict[int, dict[str, Any]] = {}
    for record in records:
        merged.setdefault(record["step"], {}).update(record)
    return [merged[step] for step in sorted(merged)]


def _last(records: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(records) if r.get(key) is not None), None)


def _first(records: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in records if r.get(key) is not None), None)


def in_place_restarts(records: list[dict[str, Any]]) -> int:
    """In-place restarts in these records: every trainer start its launcher counted as one."""
    return sum(1 for r in records if r.get("kind") == "start" and r.get("inPlaceRestarts"))


def startup(records: list[dict[str, Any]], started: float) -> dict[str, float] | None:
    """Seconds per start-up phase of the run that began at Unix time `started`, up to its first step.

    From the first `startup` line written after `started` (a gang restart writes
    another; the run's first step is the first attempt's); None before one exists.
    """
    line = next((r for r in records if r.get("kind") == "startup" and r["time"] >= started), None)
    if line is None:
        return None
    phases = {"launch": line["processStart"] - started, **{p: line["seconds"][p] for p in STARTUP_PHASES}}
    return {phase: round(seconds, 2) for phase, seconds in phases.items()}


def build_summary(
    *,
    job: str,
    outcome: str,
    records: list[dict[str, Any]],
    wall_seconds: float,
    seconds_to_first_step: float | None,
    startup_seconds: dict[str, float] | None,
    steps_per_second: float | None,
    restarts: int,
    in_place_restarts: int,
    checkpoint: Path | None,
    export: Path | None,
    sample_command: str | None,
    loss_plot: Path | None,
    reason: str | None = None,
) -> dict[str, Any]:
    steps = history(records)
    return {
        "job": job,
        "outcome": outcome,
        "reason": reason,
        "step": steps[-1]["step"] if steps else 0,
        "first_loss": _first(steps, "loss"),
        "final_loss": _last(steps, "loss"),
        "eval_loss": _last(steps, "evalLoss"),
        "eval_perplexity": _last(steps, "evalPerplexity"),
        "wall_seconds": round(wall_seconds, 2),
        "seconds_to_first_step": None if seconds_to_first_step is None else round(seconds_to_first_step, 2),
        "startup_seconds": startup_seconds,
        "steps_per_second": None if steps_per_second is None else round(steps_per_second, 3),
        "restarts": restarts,
        "in_place_restarts": in_place_restarts,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "export": str(export) if export else None,
        "sample_command": sample_command,
        "loss_plot": str(loss_plot) if loss_plot else None,
    }


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def format_summary(s: dict[str, Any]) -> str:
    """The lines people read at the end of a run."""

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    trained = s["first_loss"] is not None
    lines = [f"{s['job']}: {s['outcome']} " + (f"at step {s['step']}" if trained else "before the first step")]
    if s.get("reason"):
        lines.append(f"  reason          {s['reason']}")
    if trained:
        lines += [
            f"  loss            {num(s['first_loss'], '.4f')} -> {num(s['final_loss'], '.4f')}",
            f"  eval loss       {num(s['eval_loss'], '.4f')}  (perplexity {num(s['eval_perplexity'], '.2f')})",
            f"  wall time       {format_seconds(s['wall_seconds'])}  (first step after {num(s['seconds_to_first_step'], '.1f')} s, {num(s['steps_per_second'], '.2f')} steps/s)",
        ]
    else:
        lines.append(f"  wall time       {format_seconds(s['wall_seconds'])}")
    if s.get("startup_seconds"):
        phases = ", ".join(f"{PHASE_NAMES[p]} {v:.1f}" for p, v in s["startup_seconds"].items())
        lines.append(f"  start-up (s)    {phases}")
    if s["in_place_restarts"]:
        lines.append(f"  in place        {s['in_place_restarts']} restarts of the ranks")
    if s["restarts"]:
        lines.append(f"  gang restarts   {s['restarts']}")
    if s["checkpoint"]:
        lines.append(f"  checkpoint      {s['checkpoint']}")
    if s["export"]:
        lines.append(f"  weights         {s['export']}")
    if s["loss_plot"]:
        lines.append(f"  loss curve      {s['loss_plot']}")
    if s["sample_command"]:
        lines.append(f"  sample with     {s['sample_command']}")
    return "\n".join(lines)
