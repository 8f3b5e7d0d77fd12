"""Training metrics as an interface: their names, the JSON lines rank 0 writes, and the
Prometheus text rank 0 serves, read back without the trainer.

The trainer writes both (kubespeed_trainer's metrics sink); the operator reads the
endpoint (`http://<pod 0>:<wiring.METRICS_PORT><wiring.METRICS_PATH>`) for the
job's progress and `kubespeed local` for its progress bar and summary. Every gauge
is unlabelled; a value not yet known is absent from the JSON line and NaN in
Prometheus. `GAUGES` names them: each one's JSON key, Prometheus gauge and meaning.

Each JSON line also has `time` (Unix seconds) and `kind`: `start` (parameters,
worldSize, device, gradientAccumulation, compiled, attempt, inPlaceRestarts), `resume`
(the checkpoint's step and tag), `startup` (after the first step of each start of the
ranks: `processStart`, rank 0's process start in Unix seconds, and `seconds`, how long
each of `STARTUP_PHASES` took from there), `train` (every `training.logInterval` steps;
also `tokens` seen), `eval`, `checkpoint`, or `end` (peakRssMb of rank 0, and
peakGpuMemoryGb on a GPU).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

GAUGES: dict[str, tuple[str, str]] = {
    "step": ("kubespeed_step", "Optimizer steps done."),
    "totalSteps": ("kubespeed_total_steps", "Optimizer steps the run will do."),
    "loss": ("kubespeed_loss", "Training loss of the last logged step."),
    "lr": ("kubespeed_lr", "Learning rate of the last step."),
    "gradNorm": ("kubespeed_grad_norm", "Global gradient norm before clipping."),
    "lossScale": ("kubespeed_loss_scale", "fp16 dynamic loss scale."),
    "tokensPerSecond": ("kubespeed_tokens_per_second", "Training tokens per second over all ranks."),
    "mfu": ("kubespeed_mfu", "Model FLOPs utilisation (0-1)."),
    "evalLoss": ("kubespeed_eval_loss", "Validation loss at the last evaluation."),
    "evalPerplexity": ("kubespeed_eval_perplexity", "Validation perplexity at the last evaluation."),
    "etaSeconds": ("kubespeed_eta_seconds", "Estimated seconds until the last step."),
    "elapsedSeconds": ("kubespeed_elapsed_seconds", "Seconds this attempt has trained."),
    "checkpointStep": ("kubespeed_checkpoint_step", "Step of the newest complete checkpoint."),
    "attempt": ("kubespeed_attempt", "The operator's attempt number."),
    "inPlaceRestarts": ("kubespeed_in_place_restarts", "Times the ranks were restarted in place during this attempt."),
    "finished": ("kubespeed_finished", "1 once the last step is done and saved."),
}

# A rank's start-up, phase by phase, each ending where the next begins (the `startup` line):
# imports (Python, torch, DeepSpeed, the trainer), joining the process group, preparing
# the data, building the engine (and resuming), and the first optimizer step.
STARTUP_PHASES = ("imports", "processGroup", "data", "engine", "firstStep")

# JSON key by Prometheus name, for reading the endpoint back.
KEYS = {name: key for key, (name, _) in GAUGES.items()}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """The known gauges in Prometheus text, by JSON key; NaN (not known yet) and other metrics left out."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        key = KEYS.get(match.group(1)) if match else None
        if key is None or key in values:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        if math.isfinite(value):
            values[key] = value
    return values


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The metrics lines of a run, in order (for tests, `kubespeed local` and people)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
