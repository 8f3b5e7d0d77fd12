"""/healthz: healthy while the pod watch shows signs of life and jobs get reconciled; a standby is healthy."""

from __future__ import annotations

import pytest

from kubespeed_operator.run.health import Health

STALL = 600.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "name, leading, watch_silent, idle, live_jobs, problems",
    [
        ("a quiet leader with a live watch", True, 59, 900, 0, []),
        ("a standby waits for the Lease: nothing of its own can be stuck", False, 5000, 5000, 3, []),
        ("the pod watch silent past the stall", True, 601, 10, 3, ["the pod watch has shown nothing for 601s"]),
        ("no reconcile while jobs are live", True, 10, 700, 3, ["no job was reconciled for 700s while 3 jobs are live"]),
        ("no reconcile with no jobs is no problem", True, 10, 700, 0, []),
        ("both", True, 700, 700, 1, ["the pod watch has shown nothing for 700s", "no job was reconciled for 700s while 1 jobs are live"]),
    ],
)
def test_health_names_what_is_stuck(name, leading, watch_silent, idle, live_jobs, problems):
    clock = Clock()
    health = Health(STALL, clock)
    health.live_jobs = lambda: live_jobs
    if leading:
        health.lead()
    now = clock.now + 10_000
    clock.now = now - watch_silent
    health.watch_alive()
    clock.now = now - idle
    health.reconciled()
    clock.now = now
    found = health.problems()
    assert len(found) == len(problems), name
    for said, expected in zip(found, problems):
        assert said.startswith(expected), name
