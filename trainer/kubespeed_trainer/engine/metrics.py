"""Rank 0's metrics sink: JSON lines in the checkpoint directory and a Prometheus endpoint.

The names, and what each line and gauge means, are `kubespeed.metrics`'s: the
operator and `kubespeed local` read them back from there.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubespeed.metrics import GAUGES


class Metrics:
    """Rank 0's sink: appends JSON lines and keeps the Prometheus gauges current."""

    def __init__(self, jsonl_path: str | Path, *, port: int | None, attempt: int, total_steps: int, in_place_restarts: int = 0) -> None:
        self.path = Path(jsonl_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.registry = CollectorRegistry()
        self.gauges = {key: Gauge(name, doc, registry=self.registry) for key, (name, doc) in GAUGES.items()}
        for gauge in self.gauges.values():
            gauge.set(math.nan)
        self.server = None
        if port is not None:
            # Bound on all interfaces: the operator scrapes it through the pod's IP.
            self.server, _ = start_http_server(port, registry=self.registry)
        self.update(attempt=attempt, totalSteps=total_steps, finished=0, inPlaceRestarts=in_place_restarts)

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
