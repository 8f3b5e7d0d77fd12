"""runPolicy's recovery under `kubespeed local`, as the operator applies it on a cluster.

Each pod's launcher restarts failed ranks in place by itself, as in a pod, and
its step watchdog kills a frozen rank. What the operator adds to that, this adds:

- `StallWatch`: rank 0's step silent for runPolicy.progressDeadlineSeconds is
  reported once; silent for startupTimeoutSeconds more, in-place recovery did not
  bring it back, and the attempt ends as a failure (the gang starts again). The
  silence counts from the first step of each run of the ranks: their start-up, at
  the start and after an in-place restart rank 0 reports, is their watchdog's to bound.
- `RetryBudget`: runPolicy.backoffLimit bounds the failures in a row with no
  newer complete checkpoint between them, read from the run's checkpoint folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from kubespeed import checkpoints
from kubespeed_operator.decide.recovery import Stall


@dataclass
class StallWatch:
    """One attempt's step against runPolicy.progressDeadlineSeconds (None: hang detection off)."""

    deadline: int | None
    startup: int
    # When rank 0's step last moved in the ranks' current run; None while they start.
    last_move: float | None = None
    step: int | None = None
    in_place_restarts: int = 0
    reported: bool = False

    def observe(self, gauges: dict[str, float] | None, now: float | None = None) -> str | None:
        """Take rank 0's gauges (None: its endpoint is down); returns why the attempt must end, or None."""
        now = time.monotonic() if now is None else now
        step = int(gauges["step"]) if gauges and "step" in gauges else None
        restarts = int(gauges.get("inPlaceRestarts", 0)) if gauges else 0
        if restarts > self.in_place_restarts:
            self.last_move, self.reported, self.in_place_restarts = None, False, restarts
        if step is not None and step != self.step:
            self.last_move, self.reported, self.step = now, False, step
        if self.deadline is None or self.last_move is None:
            return None
        judged = Stall(self.step, now - self.last_move, self.deadline, self.startup)
        if judged.give_up:
            return f"{judged.describe()}: restarting the ranks in place did not bring it back within {judged.recovery}s more"
        if judged.stalled and not self.reported:
            self.reported = True
            print(f"stalled: {judged.describe()}; the ranks' watchdog restarts them in place", flush=True)
        return None


@dataclass
class RetryBudget:
    """Failures in a row with no newer complete checkpoint between them (status.consecutiveFailures on a cluster)."""

    folder: Path
    checkpoint_step: int | None = None
    failures: int = 0

    def __post_init__(self) -> None:
        self.checkpoint_step = self._newest()

    def before(self) -> int:
        """The failures in a row before the one that just happened; a newer checkpoint since the last one resets them."""
        newest = self._newest()
        if newest is not None and (self.checkpoint_step is None or newest > self.checkpoint_step):
            self.failures = 0
        self.checkpoint_step = newest
        return self.failures

    def _newest(self) -> int | None:
        tag = checkpoints.latest_complete(self.folder)
        return checkpoints.step_of(tag) if tag else None
