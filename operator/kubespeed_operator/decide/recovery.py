"""How the operator judges recovery: ranks restarted in place, a step that stopped moving, and a gang that did not start whole.

Pure functions of the old status, rank 0's latest reading, the pods and the clock,
so a restarted operator judges the same.

- In place. The pods' launchers restart the ranks themselves (torch elastic); rank 0
  reports how many times in this attempt (`kubespeed_in_place_restarts`). What a
  reading shows beyond `status.progress.inPlaceRestarts` is new: it adds to
  `status.inPlaceRestarts`, with a RestartedInPlace Event.
- Stalled. `status.progress.lastAdvanceTime` is when the step was last seen to move
  in the ranks' current run: it is cleared when they start (the attempt's pods all
  began running, or an in-place restart was seen), so their start-up, which a large
  model's checkpoint can make far longer than a step, is never taken for a hang (the
  ranks' watchdog bounds it by runPolicy.startupTimeoutSeconds). Once the silence
  reaches runPolicy.progressDeadlineSeconds the job is Stalled (by then the ranks' own
  watchdog has killed a frozen rank, and the launchers restart the ranks in place);
  in-place recovery then has as long as a start may take (startupTimeoutSeconds) to
  bring the step back, after which the gang is recreated as a failure.
- Start whole. The attempt's pods must all be running within
  runPolicy.startupTimeoutSeconds of the first one's creation; otherwise they are
  deleted and the gang is created again after a pause, which is not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubespeed.spec.job import RunPolicy
from kubespeed.spec.status import ConditionType, Reason
from kubespeed_operator.decide import progress as progress_mod
from kubespeed_operator.decide.observed import PodView
from kubespeed_operator.decide.status import NORMAL, WARNING, Cond, Event, condition, parse_time, timestamp

# Reading rank 0 three times per deadline keeps a moving step from ever looking silent for one.
READS_PER_DEADLINE = 3
# A stalled gang cannot checkpoint (its ranks are stuck), so its pods get a second, not the grace period.
STALLED_GRACE_SECONDS = 1


def read_interval(progress_interval: float, policy: RunPolicy) -> float:
    """Seconds between reads of rank 0's progress for a job with this runPolicy."""
    deadline = policy.progressDeadlineSeconds
    return progress_interval if deadline is None else min(progress_interval, deadline / READS_PER_DEADLINE)


@dataclass(frozen=True)
class Watched:
    """A running attempt as rank 0's latest reading shows it."""

    progress: dict[str, Any]
    checkpoint: dict[str, Any] | None
    new_in_place: int
    newer_checkpoint: bool


def watch(old: dict[str, Any], reading: progress_mod.TrainerReading | None, now: datetime, started: bool,
          trainer_layout: bool = True) -> Watched:  # fmt: skip
    """`status.progress` and `status.checkpoint` after this reading (None: no reading now).

    `started`: the attempt's pods have just all begun running, so the silence counts from their
    first step and the in-place restarts of the attempt from 0. `trainer_layout`: checkpoints are
    the built-in trainer's (a user's program names its own).
    """
    stamp = timestamp(now)
    progress = dict(old.get("progress") or {})
    if started:
        progress.pop("inPlaceRestarts", None)
        progress.pop("lastAdvanceTime", None)
    checkpoint = old.get("checkpoint")
    if reading is None:
        return Watched(progress, checkpoint, 0, False)
    seen = progress.get("inPlaceRestarts") or 0
    restarts = reading.in_place_restarts or 0
    new_in_place = max(0, restarts - seen)
    if new_in_place:
        progress.pop("lastAdvanceTime", None)
    if reading.step is not None and reading.step != progress.get("step"):
        progress["lastAdvanceTime"] = stamp
    progress.update(progress_mod.progress_status(reading, stamp))
    if reading.in_place_restarts is not None:
        progress["inPlaceRestarts"] = restarts
    fresh = progress_mod.checkpoint_status(reading, checkpoint, stamp, trainer_layout)
    newer = fresh is not None and (fresh.get("step") or 0) > ((checkpoint or {}).get("step") or -1)
    return Watched(progress, fresh, new_in_place, newer)


def in_place_event(watched: Watched, attempt: int, total: int) -> Event:
    restarts = watched.progress.get("inPlaceRestarts") or 0
    resumed = (watched.checkpoint or {}).get("step")
    where = f"the latest complete checkpoint (step {resumed})" if resumed is not None else "the start"
    message = (f"a rank failed and the pods' launchers restarted every rank in place ({restarts} in attempt {attempt}, "
               f"{total} in all); training resumes from {where}")
    return Event(WARNING, Reason.RESTARTED_IN_PLACE, message)


@dataclass(frozen=True)
class Stall:
    """How long a running job's step has been silent, and what that calls for."""

    step: int | None
    silent: float
    deadline: int
    # What in-place recovery may take past the deadline: a restart of the ranks up to their first step.
    recovery: int

    @property
    def stalled(self) -> bool:
        return self.silent >= self.deadline

    @property
    def give_up(self) -> bool:
        """In-place recovery had as long as a start may take and the step is still silent: recreate the gang."""
        return self.silent >= self.deadline + self.recovery

    def describe(self) -> str:
        return (f"step {self.step if self.step is not None else 0} has not advanced for {self.silent:.0f}s "
                f"(runPolicy.progressDeadlineSeconds is {self.deadline}s)")

    def wake_after(self) -> float:
        """Seconds until the next verdict changes, if the step stays silent."""
        due = self.deadline if not self.stalled else self.deadline + self.recovery
        return max(due - self.silent, 0.0)


def stall(progress: dict[str, Any], policy: RunPolicy, now: datetime) -> Stall | None:
    """The step's silence against runPolicy.progressDeadlineSeconds; None when hang detection is off."""
    deadline = policy.progressDeadlineSeconds
    since = parse_time(progress.get("lastAdvanceTime"))
    if deadline is None or since is None:
        return None
    return Stall(progress.get("step"), (now - since).total_seconds(), deadline, policy.startupTimeoutSeconds)


def stalled_condition(old: dict[str, Any], judged: Stall | None, in_place_seen: bool) -> tuple[dict[str, Cond], list[Event]]:
    """The Stalled condition (when it is or was True) and the Event of its change."""
    before = condition(old, ConditionType.STALLED)
    was_stalled = bool(before and before.get("status") == "True")
    if judged is not None and judged.stalled:
        message = (f"{judged.describe()}: a frozen rank is killed by its watchdog and the ranks restart in place; "
                   f"if the step is still silent after {judged.deadline + judged.recovery}s the gang is recreated")
        events = [] if was_stalled else [Event(WARNING, Reason.PROGRESS_DEADLINE_EXCEEDED, message)]
        return {ConditionType.STALLED: Cond("True", Reason.PROGRESS_DEADLINE_EXCEEDED, message)}, events
    if not was_stalled:
        return {}, []
    reason = Reason.RESTARTED_IN_PLACE if in_place_seen else Reason.STEP_ADVANCED
    step = judged.step if judged is not None else None
    message = ("the ranks were restarted in place; the deadline counts again from their first step" if in_place_seen
               else f"the step advances again (step {step})")
    return {ConditionType.STALLED: Cond("False", reason, message)}, [Event(NORMAL, reason, message)]


def startup_overdue(pods: list[PodView], nodes: int, policy: RunPolicy, now: datetime) -> str | None:
    """Which of the attempt's pods were not running in time, and why; None while there is time or the gang is whole."""
    if len(pods) == nodes and all(p.started for p in pods):
        return None
    created = [t for t in (parse_time(p.created) for p in pods) if t is not None]
    if not created or now < min(created) + timedelta(seconds=policy.startupTimeoutSeconds):
        return None
    present = {p.rank for p in pods}
    missing = [f"{p.name} ({p.reason or p.phase}{': ' + p.message if p.message else ''})" for p in pods if not p.started]
    missing += [f"rank {rank} (not created)" for rank in range(nodes) if rank not in present]
    return f"not running within runPolicy.startupTimeoutSeconds ({policy.startupTimeoutSeconds}s): {'; '.join(missing)}"


def startup_wait(pods: list[PodView], policy: RunPolicy, now: datetime) -> float | None:
    """Seconds until the attempt's startup bound, while its pods are still starting."""
    created = [t for t in (parse_time(p.created) for p in pods) if t is not None]
    if not created:
        return None
    return max((min(created) + timedelta(seconds=policy.startupTimeoutSeconds) - now).total_seconds(), 0.0)
