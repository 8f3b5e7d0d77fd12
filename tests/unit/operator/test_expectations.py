"""Expectations: pods this operator created that the pod watch has not shown yet."""

from __future__ import annotations

import pytest

from kubespeed_operator.decide.observed import PodView
from kubespeed_operator.run.expectations import GRACE_SECONDS, Expectations

A, B = ("ns", "a"), ("ns", "b")


def pod(job: str, rank: int, attempt: int = 1, version: str | None = None) -> PodView:
    return PodView(name=f"{job}-{rank}", rank=rank, attempt=attempt, version=version)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_created_pods_are_expected_until_the_watch_shows_them() -> None:
    expectations = Expectations()
    expectations.expect(A, [pod("a", 0), pod("a", 1)])
    expectations.expect(B, [pod("b", 0)])
    assert (expectations.outstanding(A), expectations.outstanding(B), expectations.outstanding()) == (2, 1, 3)
    assert expectations.unseen(A) == [pod("a", 0), pod("a", 1)]
    expectations.observe(A, [pod("a", 0)])
    assert expectations.unseen(A) == [pod("a", 1)] and expectations.outstanding() == 2
    expectations.observe(A, [pod("a", 0), pod("a", 1)])
    assert expectations.unseen(A) == [] and (expectations.outstanding(A), expectations.outstanding()) == (0, 1)


def test_a_pod_of_another_attempt_with_the_same_name_is_not_the_one_expected() -> None:
    expectations = Expectations()
    expectations.expect(A, [pod("a", 0, attempt=2)])
    expectations.observe(A, [pod("a", 0, attempt=1)])
    assert expectations.unseen(A) == [pod("a", 0, attempt=2)]


def test_creating_a_pod_again_expects_it_once() -> None:
    expectations = Expectations()
    expectations.expect(A, [pod("a", 0)])
    expectations.expect(A, [pod("a", 0)])
    assert expectations.outstanding() == 1


def test_a_pod_the_watch_never_shows_is_expected_for_the_grace_period_only() -> None:
    clock = Clock()
    expectations = Expectations(clock=clock)
    expectations.expect(A, [pod("a", 0)])
    clock.now += GRACE_SECONDS
    expectations.observe(A, [])
    assert expectations.outstanding() == 1
    clock.now += 1
    expectations.observe(A, [])
    assert expectations.outstanding() == 0 and expectations.unseen(A) == []


@pytest.mark.parametrize(
    ("created", "watch", "expected"),
    [
        pytest.param("1200", "1199", 1, id="watch-behind-the-create"),
        pytest.param("1200", "1200", 0, id="watch-at-the-create-without-the-pod"),
        pytest.param("1200", "98000", 0, id="watch-past-the-create"),
        pytest.param("1200", None, 1, id="watch-version-unknown"),
        pytest.param("a1f", "b2e", 1, id="versions-not-comparable"),
    ],
)
def test_a_pod_is_expected_until_the_watch_passes_the_version_it_was_created_at(created: str, watch: str | None, expected: int) -> None:
    clock = Clock()
    expectations = Expectations(clock=clock)
    expectations.expect(A, [pod("a", 0, version=created)])
    # Long after a create, a watch that lags behind it still keeps the pod expected: no create is repeated.
    clock.now += GRACE_SECONDS / 2
    expectations.observe(A, [], watch)
    assert expectations.outstanding() == expected


def test_forgetting_a_job_drops_its_pods_only() -> None:
    expectations = Expectations()
    expectations.expect(A, [pod("a", 0), pod("a", 1)])
    expectations.expect(B, [pod("b", 0)])
    expectations.forget(A)
    assert (expectations.outstanding(A), expectations.outstanding()) == (0, 1)


def test_every_change_of_what_is_outstanding_is_told() -> None:
    told: list[int] = []
    expectations = Expectations()
    expectations.on_change = lambda: told.append(expectations.outstanding())
    expectations.expect(A, [pod("a", 0), pod("a", 1)])
    expectations.observe(A, [pod("a", 0)])
    expectations.forget(A)
    assert told == [2, 1, 0]
