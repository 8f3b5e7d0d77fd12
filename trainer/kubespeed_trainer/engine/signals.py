"""SIGTERM as a request to stop cleanly: noted when it arrives, acted on at a step boundary.

The handler only sets a flag, so a signal never interrupts a collective or a
checkpoint write. At each step boundary the ranks agree on whether any of them
was asked to stop (an all-reduce of the flag, so a SIGTERM that reached only
some ranks still stops all of them at the same step); the trainer then writes
a checkpoint and exits with `wiring.EXIT_PREEMPTED`.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch
import torch.distributed as dist


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def install(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> "StopRequest":
        for sig in signals:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def agreed(self, device: torch.device) -> bool:
        """True on every rank when any rank was asked to stop; a collective, so call it on all ranks."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
