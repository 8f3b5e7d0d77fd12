"""The registry of live jobs: which copy of a job is newer, what is news, and the spec per generation."""

from __future__ import annotations

from typing import Any

from kubespeed_operator.run.jobs import Jobs

KEY = ("ns", "j")


def _job(version: str, uid: str = "u1", phase: str | None = None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "j", "uid": uid, "resourceVersion": version, "generation": generation},
        "spec": {"image": "trainer:1", "data": {"train": "builtin:tiny"}, **spec},
        "status": {"phase": phase} if phase else {},
    }


def test_an_older_watch_event_does_not_replace_the_status_just_written() -> None:
    jobs = Jobs()
    written = _job("120", phase="Pending")
    jobs.written(written)
    jobs.seen(_job("100"))
    assert jobs.get(KEY) is written
    later = _job("130", phase="Running")
    jobs.seen(later)
    assert jobs.get(KEY) is later


def test_a_recreated_job_or_an_opaque_version_counts_as_newer() -> None:
    jobs = Jobs()
    opaque = _job("abc")
    jobs.seen(opaque)
    assert jobs.get(KEY) is opaque
    jobs.seen(_job("120"))
    recreated = _job("5", uid="u2")
    jobs.seen(recreated)
    assert jobs.get(KEY) is recreated
    jobs.seen(opaque)
    assert jobs.get(KEY) is opaque


def test_only_the_echo_of_the_operators_own_write_is_no_news() -> None:
    jobs = Jobs()
    assert jobs.seen(_job("100"))
    jobs.written(_job("120", phase="Pending"))
    assert not jobs.seen(_job("120", phase="Pending"))
    assert jobs.seen(_job("121", phase="Pending"))
    jobs.forget(KEY)
    assert jobs.seen(_job("120"))


def test_a_forgotten_job_is_no_longer_live() -> None:
    jobs = Jobs()
    jobs.seen(_job("100", phase="Running"))
    assert KEY in jobs and jobs.phases() == ["Running"]
    jobs.forget(KEY)
    assert KEY not in jobs and jobs.get(KEY) is None and jobs.phases() == []


def test_the_spec_is_parsed_once_per_generation() -> None:
    jobs = Jobs()
    first = jobs.spec(_job("100", nodes=1))
    assert first is not None and first.nodes == 1
    assert jobs.spec(_job("101", nodes=1)) is first
    changed = jobs.spec(_job("102", generation=2, nodes=2, checkpoint={"claimName": "shared"}))
    assert changed is not None and changed.nodes == 2


def test_a_spec_that_does_not_parse_is_none() -> None:
    assert Jobs().spec(_job("100", nodes=0)) is None
