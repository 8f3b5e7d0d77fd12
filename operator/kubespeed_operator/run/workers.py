"""One asyncio task per job, so a job's reconciles never overlap and a burst of events is one reconcile.

Pod events, job events and the job's own timer all `wake` the job's task; it
reconciles, then sleeps until the next wake or the time the decision asked for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import aiohttp

from kubespeed_operator.run.kube import ApiError

logger = logging.getLogger("kubespeed.operator")

Reconcile = Callable[[str, str], Awaitable[float | None]]
# Events that arrive within this window after a wake are handled by the same reconcile.
SETTLE_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 60.0


class Workers:
    def __init__(self, reconcile: Reconcile, on_error: Callable[[], None] = lambda: None):
        self.reconcile = reconcile
        self.on_error = on_error
        self._wakes: dict[tuple[str, str], asyncio.Event] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task] = {}

    def wake(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._tasks:
            self._wakes[key] = asyncio.Event()
            self._tasks[key] = asyncio.create_task(self._run(key), name=f"job {namespace}/{name}")
        self._wakes[key].set()

    def forget(self, namespace: str, name: str) -> None:
        task = self._tasks.pop((namespace, name), None)
        self._wakes.pop((namespace, name), None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._wakes.clear()

    async def _run(self, key: tuple[str, str]) -> None:
        wake = self._wakes[key]
        backoff = 1.0
        delay: float | None = 0.0
        try:
            while delay is not None:
                try:
                    await asyncio.wait_for(wake.wait(), timeout=delay)
                    await asyncio.sleep(SETTLE_SECONDS)
                except asyncio.TimeoutError:
                    pass
                wake.clear()
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
                self._tasks.pop(key, None)
                self._wakes.pop(key, None)
