"""Where a rank's start-up time is counted from: its process's start, as the kernel recorded it."""

from __future__ import annotations

import os
import subprocess
import sys
import time


PROBE = "from kubespeed_trainer.engine import startup; print(repr(startup.process_start()))"


def test_a_process_start_lies_between_asking_for_the_process_and_getting_it() -> None:
    # The kernel counts a start in clock ticks: it may read up to one tick before the request.
    tick = 1 / os.sysconf("SC_CLK_TCK")
    before = time.time()
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    after = time.time()
    assert result.returncode == 0, result.stderr[-3000:]
    assert before - tick <= float(result.stdout) <= after

