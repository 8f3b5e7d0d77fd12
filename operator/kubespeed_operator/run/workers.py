"""One asyncio task per job, so a job's reconciles never overlap and a burst of events is one reconcile.

Pod events, job events and the job's own timer all `wake` the job's task; it
reconciles, then sleeps until the next wake or the time the decision asked for.
A wake says how soon it must be looked at: a job event or a pod that failed or
went within SETTLE_SECONDS, a pod that only came, started or became ready
within BATCH_SECONDS (the Job controller's podUpdateBatchPeriod), so that a
gang whose pods start over a second is one reconcile and one status write, not
one per pod; the soonest wake pending decides.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Awaitable, Callable

import aiohttp

from kubespeed_operator.run.kube import ApiError

logger = logging.getLogger("kubespeed.operator")

Key = tuple[str, str]
Reconcile = Callable[[str, str], Awaitable[float | None]]
# Events that arrive within this window after a wake are handled by the same reconcile.
SETTLE_SECONDS = 0.2
BATCH_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0


async def _no_wait(key: Key) -> None:
    return None


class Workers:
    def __init__(self, reconcile: Reconcile, on_error: Callable[[], None] = lambda: None,
                 ready: Callable[[Key], Awaitable[None]] = _no_wait):  # fmt: skip
        """`ready(key)`: awaited before a woken reconcile, and events that arrive meanwhile are
        handled by that reconcile rather than waking another."""
        self.reconcile = reconcile
        self.on_error = on_error
        self.ready = ready
        self._wakes: dict[Key, asyncio.Event] = {}
        # Set when a wake asks for a look sooner than the one pending.
        self._sooner: dict[Key, asyncio.Event] = {}
        # The loop time by which the pending wake is to be looked at.
        self._due: dict[Key, float] = {}
        self._tasks: dict[Key, asyncio.Task] = {}

    def wake(self, namespace: str, name: str, within: float = SETTLE_SECONDS) -> None:
        key = (namespace, name)
        if key not in self._tasks:
            self._wakes[key] = asyncio.Event()
            self._sooner[key] = asyncio.Event()
            self._tasks[key] = asyncio.create_task(self._run(key), name=f"job {namespace}/{name}")
        due = asyncio.get_running_loop().time() + within
        if due < self._due.get(key, math.inf):
            self._due[key] = due
            self._sooner[key].set()
        self._wakes[key].set()

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        task = self._tasks.pop(key, None)
        for part in (self._wakes, self._sooner, self._due):
            part.pop(key, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for part in (self._tasks, self._wakes, self._sooner, self._due):
            part.clear()

    async def _settle(self, key: Key) -> None:
        """Sleep until the pending wake is due; a sooner wake meanwhile brings that forward."""
        loop = asyncio.get_running_loop()
        sooner = self._sooner[key]
        while (left := self._due.get(key, 0.0) - loop.time()) > 0:
            sooner.clear()
            try:
                await asyncio.wait_for(sooner.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass

    async def _run(self, key: Key) -> None:
        wake = self._wakes[key]
        backoff = 1.0
        delay: float | None = 0.0
        try:
            while delay is not None:
                try:
                    await asyncio.wait_for(wake.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
                await self._settle(key)
                await self.ready(key)
                wake.clear()
                self._due.pop(key, None)
                try:
                    delay = await self.reconcile(*key)
                    backoff = 1.0
                except (ApiError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
                    # The API server is restarting, overloaded, or refused a write: try again later, quietly.
                    self.on_error()
                    logger.warning("%s/%s: reconcile failed, retrying in %.0fs: %s", *key, backoff, err)
                    delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF_SECONDS)
        finally:
            if self._tasks.get(key) is asyncio.current_task():
                for part in (self._tasks, self._wakes, self._sooner, self._due):
                    part.pop(key, None)
