"""The reconciler's cache of what the API server said: which copy of a job is newer, and what is news."""

from __future__ import annotations

from typing import Any

from kubespeed_operator.decide.lifecycle import Timing
from kubespeed_operator.run.metrics import OperatorMetrics
from kubespeed_operator.run.reconciler import Reconciler, _newer


def _job(version: str, uid: str = "u1", phase: str | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "j", "uid": uid, "resourceVersion": version}, "status": {"phase": phase} if phase else {}}


def test_an_older_watch_event_does_not_replace_the_status_just_written() -> None:
    written = _job("120", phase="Pending")
    assert _newer(written, _job("100")) is written
    later = _job("130", phase="Running")
    assert _newer(written, later) is later


def test_a_recreated_job_or_an_opaque_version_counts_as_newer() -> None:
    recreated = _job("5", uid="u2")
    assert _newer(_job("120"), recreated) is recreated
    opaque = _job("abc")
    assert _newer(_job("120"), opaque) is opaque
    assert _newer(None, opaque) is opaque


def test_only_the_echo_of_the_operators_own_write_is_no_news() -> None:
    reconciler = Reconciler(kube=None, metrics=OperatorMetrics(), timing=Timing(), identity="t", http=None)  # type: ignore[arg-type]
    assert reconciler.job_seen(_job("100"))
    reconciler._written[("ns", "j")] = "120"
    assert not reconciler.job_seen(_job("120", phase="Pending"))
    assert reconciler.job_seen(_job("121", phase="Pending"))
    reconciler.forget("ns", "j")
    assert reconciler.job_seen(_job("120"))
