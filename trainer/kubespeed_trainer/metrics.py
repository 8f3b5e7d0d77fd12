"""Training metrics: JSON lines in the checkpoint directory and a Prometheus endpoint, both from rank 0.

The operator reads the endpoint (`http://<pod 0>:<wiring.METRICS_PORT><wiring.METRICS_PATH>`)
for the job's progress, so these names are an interface; change them together
with the operator. Every gauge is unlabelled; a value not yet known is absent
from the JSON line and left at NaN in Prometheus.

| Prometheus gauge                 | JSON key         | meaning                                                        |
|----------------------------------|------------------|----------------------------------------------------------------|
| kubespeed_step                   | step             | optimizer steps done                                           |
| kubespeed_total_steps            | totalSteps       | optimizer steps the run will do (`training.steps`)             |
| kubespeed_loss                   | loss             | training loss, mean over the last logged step's micro batches and ranks |
| kubespeed_lr                     | lr               | learning rate of the last step                                 |
| kubespeed_grad_norm              | gradNorm         | global gradient norm before clipping                           |
| kubespeed_loss_scale             | lossScale        | fp16 dynamic loss scale (absent otherwise)                     |
| kubespeed_tokens_per_second      | tokensPerSecond  | training tokens per second over all ranks, since the last log  |
| kubespeed_mfu                    | mfu              | model FLOPs utilisation, 0-1 (GPU only; see device.peak_flops) |
| kubespeed_eval_loss              | evalLoss         | validation loss at the last evaluation                         |
| kubespeed_eval_perplexity        | evalPerplexity   | exp(evalLoss)                                                  |
| kubespeed_eta_seconds            | etaSeconds       | estimated seconds until the last step                          |
| kubespeed_elapsed_seconds        | elapsedSeconds   | seconds this run (attempt) has trained                         |
| kubespeed_checkpoint_step        | checkpointStep   | step of the newest complete checkpoint                         |
| kubespeed_attempt                | attempt          | the operator's attempt number (KUBESPEED_ATTEMPT), 0 outside it |
| kubespeed_finished               | finished         | 1 once the last step is done and saved                         |

Each JSON line also has `time` (Unix seconds) and `kind`: `start` (parameters,
worldSize, device, gradientAccumulation), `resume` (the checkpoint's step and
tag), `train` (every `training.logInterval` steps; also `tokens` seen), `eval`,
`checkpoint`, or `end` (peakRssMb of rank 0, and peakGpuMemoryGb on a GPU).
"""

from __future__ import annotations

import json
import math
import time
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
    "finished": ("kubespeed_finished", "1 once the last step is done and saved."),
}


class Metrics:
    """Rank 0's sink: appends JSON lines and keeps the Prometheus gauges current."""

    def __init__(self, jsonl_path: str | Path, *, port: int | None, attempt: int, total_steps: int) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.path = Path(jsonl_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.registry = CollectorRegistry()
        self.gauges = {key: Gauge(name, doc, registry=self.registry) for key, (name, doc) in GAUGES.items()}
        for gauge in self.gauges.values():
            gauge.set(math.nan)
        self.server = None
        if port is not None:
            from prometheus_client import start_http_server

            # Bound on all interfaces: the operator scrapes it through the pod's IP.
            self.server, _ = start_http_server(port, registry=self.registry)
        self.update(attempt=attempt, totalSteps=total_steps, finished=0)

    def update(self, **values: Any) -> None:
        for key, value in values.items():
            if value is not None and key in self.gauges:
                self.gauges[key].set(float(value))

    def record(self, kind: str, **values: Any) -> dict[str, Any]:
        """Write one JSON line (None values left out) and update the gauges."""
        line = {"time": round(time.time(), 3), "kind": kind, **{k: v for k, v in values.items() if v is not None}}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        self.update(**values)
        return line

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The metrics lines of a run, in order (for tests, `kubespeed local` and people)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
