"""SIGTERM as a request to stop cleanly: noted when it arrives, acted on at a step boundary.

The handler only sets a flag, so a signal never interrupts a collective or a
checkpoint write. At each step boundary the ranks agree on whether any of them
was asked to stop (an all-reduce of the flag, so a SIGTERM that reached only
some ranks still stops all of them at the same step); the trainer then writes
a checkpoint and exits with `wiring.EXIT_PREEMPTED`.

The all-reduce of a step's flags runs in the background, on the CPU, while the
next step trains, and its result is read at the next boundary: all ranks read
it at the same boundary, one step after the request, and no step waits for it.
(Reading a flag reduced on a GPU in the same step would wait for all of that
step's kernels: a host sync per step.)
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
        self._group: dist.ProcessGroup | None = None
        self._pending: tuple[dist.Work, torch.Tensor] | None = None

    def install(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> "StopRequest":
        for sig in signals:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def join(self) -> "StopRequest":
        """Agree over the ranks' process group: a CPU (gloo) one, made here beside a GPU group; a collective, call it on all ranks."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return self

    def agreed(self) -> bool:
        """True on every rank at the same step boundary: the one after a boundary at which some rank had been asked to stop.

        A collective: call it on all ranks at every step boundary.
        """
        if self._group is None:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        previous, self._pending = self._pending, (work, flag)
        if previous is None:
            return False
        previous_work, previous_flag = previous
        previous_work.wait()
        return bool(previous_flag.item())

    def settle(self) -> None:
        """Wait for the agreement still in flight (a collective: call it on all ranks) and let go
        of the group, before the process group is destroyed; from then on `agreed` answers for
        this process alone.

        gloo aborts the process (SIGABRT, "terminate called without an active exception") when a
        peer closes its connections under a pending all-reduce. And `destroy_process_group` only
        drops torch's own references: a group still held here (the signal handler keeps this
        object alive) would be torn down during interpreter finalization instead, its threads
        and pending work with it, which aborts the same way.
        """
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
        self._group = None
