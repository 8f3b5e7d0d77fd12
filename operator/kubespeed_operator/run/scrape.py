"""Reading rank 0's Prometheus endpoint (http://<rank 0 pod IP>:METRICS_PORT/metrics) for the job's progress."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from kubespeed import wiring
from kubespeed_operator.decide.progress import TrainerReading, parse

READ_TIMEOUT_SECONDS = 2.0


def metrics_url(pod_ip: str) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{wiring.METRICS_PORT}{wiring.METRICS_PATH}"


async def read(session: aiohttp.ClientSession, pod_ip: str) -> TrainerReading | None:
    """Rank 0's progress, or None when its endpoint cannot be read (not up yet, restarting, unreachable)."""
    try:
        timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT_SECONDS)
        async with session.get(metrics_url(pod_ip), timeout=timeout) as response:
            if response.status != 200:
                return None
            return parse(await response.text())
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, UnicodeDecodeError):
        return None


class ProgressReader:
    """Reads each job's rank 0 at most once per its read interval, however often the job is reconciled."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        # Monotonic time of the next read per job: a rate limit, not state.
        self._next_read: dict[tuple[str, str], float] = {}

    async def read(self, job: tuple[str, str], pod_ip: str, interval: float) -> TrainerReading | None:
        if time.monotonic() < self._next_read.get(job, 0.0):
            return None
        self._next_read[job] = time.monotonic() + interval
        return await read(self.session, pod_ip)

    def forget(self, job: tuple[str, str]) -> None:
        self._next_read.pop(job, None)
