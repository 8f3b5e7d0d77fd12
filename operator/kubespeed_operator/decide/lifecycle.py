"""The job's lifecycle as one pure decision: (job, observed pods, clock) -> status and actions.

Pending -> Running -> Succeeded | Failed, with Suspended and Restarting on the way.
The rules that keep the gang whole:

- The current attempt is the highest of `status.attempt` and the pods' attempt
  labels (the status is written before an attempt's pods are created, so a stale
  read can only lag). Pods of any other attempt are deleted, and the current
  attempt's pods are created only once those are gone: pod names are the same
  in every attempt, so old and new never mix.
- Ending an attempt (a failure, or suspend) first records the next attempt
  number in the status, then deletes the pods with the spec's grace period, so
  rank 0 can write a checkpoint on SIGTERM.
- Succeeded and Failed are final: nothing that happens to pods afterwards (the
  TTL deleting them, cleanPodPolicy) starts anything again.
- Recovery is in place first: the pods' launchers restart failed ranks themselves,
  and the operator only records it (`decide.recovery`). It recreates the gang when a
  pod fails or goes (the launchers gave up, or a node was lost), or when the step
  stays silent past runPolicy.progressDeadlineSeconds and then as long as a start of
  the ranks may take (startupTimeoutSeconds). A failure spends the
  retry budget (status.consecutiveFailures against runPolicy.backoffLimit) unless it
  is a disruption; a newer complete checkpoint gives the budget back.
- A change of spec.nodes replaces a gang of another size (status.nodes) the same way,
  as a resize (`status.resizes`), not a failure; a size the spec refuses only because of
  its new nodes leaves the gang as it is (`decide.resize`).
- A gang that is not all running within runPolicy.startupTimeoutSeconds is deleted
  and created again after `Timing.startup_retry`, as the next attempt; not a failure.
- With spec.elastic, pods that stay Unschedulable shrink the gang first, and capacity
  probes grow it back (`decide.elastic`): resizes too, never failures.

`run.reconciler` runs `decide` on every change of the job or its pods and on a timer, and applies the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec, SpecError, from_dict
from kubespeed.spec.job import RunPolicy
from kubespeed.spec.status import TERMINAL_PHASES, ConditionType, Phase, Reason
from kubespeed_operator.decide import progress as progress_mod
from kubespeed_operator.decide import elastic, recovery, resize
from kubespeed_operator.decide.observed import PodPhase, PodReason, PodView, ProbeView
from kubespeed_operator.decide.restart import Failure, attempt_failure, verdict
from kubespeed_operator.decide.status import (
    Cond,
    Event,
    condition,
    merge_conditions,
    parse_time,
    phase_conditions,
    replicas,
    timestamp,
    transition_events,
)

# Waiting reasons that are part of a normal start, not a problem to report.
STARTING_REASONS = (PodReason.CONTAINER_CREATING, PodReason.POD_INITIALIZING)
IMAGE_HINT = "check spec.image and the pull secret of the pods' ServiceAccount"
# What to check for a pod that cannot start, by its reason.
PENDING_HINTS = {
    PodReason.ERR_IMAGE_PULL: IMAGE_HINT,
    PodReason.IMAGE_PULL_BACK_OFF: IMAGE_HINT,
    PodReason.UNSCHEDULABLE: "check spec.nodes, spec.procsPerNode, spec.resources and spec.scheduling against the cluster's nodes",
}


@dataclass(frozen=True)
class Timing:
    """How often time-driven work happens (`kubespeed operator`'s flags may override these)."""

    progress_interval: float = 15.0  # reading rank 0's metrics, per running job
    blocked_retry: float = 30.0  # a job waiting for a claim, quota or permission tries again
    resync: float = 300.0  # the timer reconcile when nothing else is due
    startup_retry: float = 60.0  # a gang that did not start whole is created again after this pause


@dataclass(frozen=True)
class Blocker:
    """Why the current attempt's pods could not be created; permanent ones fail the job."""

    reason: str
    message: str
    permanent: bool = False
    # Seconds until the next try, when sooner than Timing.blocked_retry.
    retry_after: float | None = None


@dataclass
class Decision:
    status: dict[str, Any]
    reason: str
    # SIGTERM to SIGKILL for the pods it deletes: runPolicy.terminationGracePeriodSeconds.
    grace_seconds: int
    # Seconds until the job is looked at again with nothing new observed.
    wake_after: float
    delete_pods: list[str] = field(default_factory=list)
    create_attempt: int | None = None
    create_ranks: list[int] = field(default_factory=list)
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)
    # Capacity probes to keep pending (elastic mode, shrunk and running); every other decision deletes them.
    probes: int = 0


def run_policy(job: dict[str, Any], spec: LMTrainingJobSpec | None) -> RunPolicy:
    """The job's runPolicy, defaulted by the spec's declaration.

    When another part of the spec is refused, runPolicy is parsed on its own, so
    the failed job's cleanup and TTL still follow it; when it too is refused, the
    declaration's defaults apply.
    """
    if spec is not None:
        return spec.runPolicy
    try:
        return from_dict(RunPolicy, (job.get("spec") or {}).get("runPolicy"), "spec.runPolicy")
    except SpecError:
        return RunPolicy()


class _Context:
    """The inputs of one decision, with the helpers every branch needs."""

    def __init__(self, job: dict[str, Any], pods: list[PodView], now: datetime, timing: Timing, policy: RunPolicy):
        self.job = job
        self.name = job["metadata"]["name"]
        self.generation = job["metadata"].get("generation")
        self.old: dict[str, Any] = job.get("status") or {}
        self.pods = sorted(pods, key=lambda p: (p.attempt, p.rank))
        self.now = now
        self.timing = timing
        self.attempt = max([self.old.get("attempt") or 0, *(p.attempt for p in pods)])
        self.restarts = self.old.get("restarts") or 0
        self.disruptions = self.old.get("disruptions") or 0
        self.in_place = self.old.get("inPlaceRestarts") or 0
        self.failures = self.old.get("consecutiveFailures") or 0
        self.resizes = self.old.get("resizes") or 0
        self.policy = policy
        # The Resized condition and its Event, once the spec is read (decide.resize).
        self.resized: dict[str, Cond] = {}
        self.resize_events: list[Event] = []
        # status.elastic: the size elastic mode chose, while it holds (decide.elastic).
        self.elastic: dict[str, Any] | None = None

    def of_attempt(self, attempt: int) -> list[PodView]:
        return [p for p in self.pods if p.attempt == attempt]

    def status(self, phase: str, reason: str, message: str, extra: dict[str, Cond] | None = None, **fields: Any) -> dict[str, Any]:
        wanted = phase_conditions(self.old.get("conditions") or [], phase, reason, message)
        wanted.update(self.resized)
        wanted.update(extra or {})
        status = {k: v for k, v in self.old.items() if k not in ("phase", "message", "conditions")}
        status.update(
            phase=phase,
            message=message,
            conditions=merge_conditions(self.old.get("conditions") or [], wanted, self.now, self.generation),
            observedGeneration=self.generation,
            attempt=self.attempt or None,
            restarts=self.restarts,
            disruptions=self.disruptions or None,
            inPlaceRestarts=self.in_place or None,
            consecutiveFailures=self.failures or None,
            resizes=self.resizes or None,
            elastic=self.elastic,
            replicas=replicas(self.of_attempt(self.attempt)),
        )
        status.update(fields)
        return {k: v for k, v in status.items() if v is not None}

    def decision(self, status: dict[str, Any], reason: str, wake_after: float, grace: int | None = None, **kwargs: Any) -> Decision:
        grace = self.policy.terminationGracePeriodSeconds if grace is None else grace
        decision = Decision(status=status, reason=reason, grace_seconds=grace, wake_after=wake_after, **kwargs)
        decision.events = transition_events(self.old, status, reason) + self.resize_events
        return decision

    def cleanup(self, everything_active: bool = False) -> list[str]:
        """Pods to delete when the job ends, per runPolicy.cleanPodPolicy."""
        live = [p for p in self.pods if not p.deleting]
        if self.policy.cleanPodPolicy == "All":
            return [p.name for p in live]
        if self.policy.cleanPodPolicy == "Running" or everything_active:
            return [p.name for p in live if not p.finished]
        return []

    def deadline_left(self) -> float | None:
        start = parse_time(self.old.get("startTime"))
        limit = self.policy.activeDeadlineSeconds
        if start is None or limit is None:
            return None
        return (start + timedelta(seconds=limit) - self.now).total_seconds()


def decide(
    job: dict[str, Any],
    pods: list[PodView],
    now: datetime,
    timing: Timing = Timing(),
    blocker: Blocker | None = None,
    progress: progress_mod.TrainerReading | None = None,
    spec: LMTrainingJobSpec | None = None,
    probes: list[ProbeView] | None = None,
) -> Decision:
    """What the job's status should be and what to do about its pods, from what was observed.

    `spec` is the job's spec already parsed, if the caller has it; else it is parsed here.
    `probes`: the job's capacity probes (elastic mode).
    """
    ctx = _Context(job, pods, now, timing, run_policy(job, spec))
    if ctx.old.get("phase") in TERMINAL_PHASES:
        return _finished(ctx)
    try:
        spec = elastic.effective_spec(job, spec or resize.parse_keeping_size(job))
    except SpecError as err:
        return _end(ctx, Phase.FAILED, Reason.INVALID_SPEC, f"{err}; fix the spec and create the job again")
    ctx.elastic = elastic.choice(job, spec)
    ctx.resized, ctx.resize_events = resize.resized_condition(ctx.old, resize.refusal(job, spec))
    if blocker is not None and blocker.permanent:
        return _end(ctx, Phase.FAILED, blocker.reason, blocker.message)
    left = ctx.deadline_left()
    if left is not None and left <= 0 and not spec.runPolicy.suspend:
        message = f"the job ran longer than runPolicy.activeDeadlineSeconds ({spec.runPolicy.activeDeadlineSeconds}s)"
        return _end(ctx, Phase.FAILED, Reason.DEADLINE_EXCEEDED, message, everything_active=True)
    if spec.runPolicy.suspend:
        return _suspended(ctx)
    return _active(ctx, spec, blocker, progress, left, probes or [])


def _end(ctx: _Context, phase: str, reason: str, message: str, everything_active: bool = False, **fields: Any) -> Decision:
    status = ctx.status(phase, reason, message, completionTime=timestamp(ctx.now), **fields)
    ttl = ctx.policy.ttlSecondsAfterFinished
    wake = ttl if ttl is not None else ctx.timing.resync
    return ctx.decision(status, reason, wake_after=max(float(wake), 0.0), delete_pods=ctx.cleanup(everything_active))


def _finished(ctx: _Context) -> Decision:
    """A job that has ended stays ended: only cleanup and the TTL remain."""
    old = ctx.old
    status = {**old, "observedGeneration": ctx.generation, "replicas": replicas(ctx.of_attempt(ctx.attempt))}
    own = next((c for c in old.get("conditions") or [] if c.get("type") == old.get("phase")), {})
    decision = Decision(
        status=status, reason=own.get("reason") or old["phase"], grace_seconds=ctx.policy.terminationGracePeriodSeconds,
        wake_after=ctx.timing.resync, delete_pods=ctx.cleanup(),
    )
    completed = parse_time(old.get("completionTime"))
    ttl = ctx.policy.ttlSecondsAfterFinished
    if ttl is not None and completed is not None:
        left = (completed + timedelta(seconds=ttl) - ctx.now).total_seconds()
        decision.delete_job = left <= 0
        decision.wake_after = max(left, 0.0)
    return decision


def _suspended(ctx: _Context) -> Decision:
    """Suspending ends the attempt: its pods go, the ConfigMap and checkpoints stay."""
    if ctx.old.get("phase") != Phase.SUSPENDED and ctx.attempt >= 1:
        # The attempt that resumes is a new one, so its pods never meet the suspended ones.
        ctx.attempt += 1
    # A resumed job tries spec.nodes again; elastic mode shrinks it anew if capacity is still missing.
    ctx.elastic = None
    message = "suspended: pods deleted, config and checkpoints kept; set spec.runPolicy.suspend to false to resume"
    # Like a batch Job, the deadline clock starts again when the job resumes.
    status = ctx.status(Phase.SUSPENDED, Reason.SUSPENDED, message, startTime=None)
    doomed = [p.name for p in ctx.pods if not p.deleting]
    return ctx.decision(status, Reason.SUSPENDED, wake_after=ctx.timing.resync, delete_pods=doomed)


def _pending_problem(pods: list[PodView]) -> tuple[str, str] | None:
    for pod in pods:
        if not pod.started and pod.reason and pod.reason not in STARTING_REASONS:
            hint = PENDING_HINTS.get(pod.reason, "see `kubectl describe pod`")
            return pod.reason, f"pod {pod.name}: {pod.message or pod.reason}; {hint}"
    return None


def _active(
    ctx: _Context,
    spec: LMTrainingJobSpec,
    blocker: Blocker | None,
    progress: progress_mod.TrainerReading | None,
    deadline_left: float | None,
    probes: list[ProbeView],
) -> Decision:
    ctx.attempt = max(ctx.attempt, 1)
    attempt, nodes, policy = ctx.attempt, spec.nodes, spec.runPolicy
    current = ctx.of_attempt(attempt)
    stale = [p for p in ctx.pods if p.attempt != attempt]
    timers = [ctx.timing.resync] + ([deadline_left] if deadline_left is not None else [])
    resumed = ctx.old.get("phase") == Phase.SUSPENDED
    retry_at = parse_time(ctx.old.get("nextAttemptTime"))

    if stale:
        # Same names in every attempt: the next attempt waits until the old pods are gone.
        phase = Phase.RESTARTING if ctx.old.get("phase") == Phase.RESTARTING else Phase.PENDING
        message = f"waiting for {len(stale)} pods of earlier attempts to terminate before attempt {attempt} starts"
        if phase == Phase.RESTARTING or retry_at is not None:
            reason, message = _own_reason(ctx.old), ctx.old.get("message") or message
        else:
            reason = Reason.RESUMED if resumed else Reason.WAITING_FOR_OLD_PODS
        doomed = [p.name for p in stale if not p.deleting]
        return ctx.decision(ctx.status(phase, reason, message), reason, wake_after=min(timers), delete_pods=doomed)

    # The size the current attempt was started at; the gang is replaced when the spec asks for another.
    size = ctx.old.get("nodes") or nodes
    if size != nodes and current:
        return _resize(ctx, current, timers, resize.as_specified(size, nodes, attempt))
    shrunk, shrink_wait = elastic.shrink(ctx.job, spec, current, ctx.now)
    if shrunk is not None:
        return _resize(ctx, current, timers, shrunk)
    timers += [shrink_wait] if shrink_wait is not None else []
    fields_of_size = {"nodes": nodes, "selector": f"{wiring.JOB_LABEL}={ctx.name}"}

    if not current and retry_at is not None and ctx.now < retry_at:
        status = ctx.status(Phase.PENDING, Reason.STARTUP_TIMEOUT, ctx.old.get("message") or "")
        return ctx.decision(status, Reason.STARTUP_TIMEOUT, wake_after=min(timers + [(retry_at - ctx.now).total_seconds()]))

    overdue = recovery.startup_overdue(current, nodes, policy, ctx.now)
    if overdue is not None:
        return _release(ctx, current, overdue, timers)

    whole = len(current) == nodes and all(p.phase in (PodPhase.RUNNING, PodPhase.SUCCEEDED) for p in current)
    watched = None
    if whole or progress is not None:
        watched = recovery.watch(ctx.old, progress, ctx.now, started=whole and ctx.old.get("phase") != Phase.RUNNING,
                                 trainer_layout=spec.program is None)  # fmt: skip
    # Past the retry time of a released gang: its next attempt is under way.
    fields: dict[str, Any] = {**fields_of_size, **({"nextAttemptTime": None} if retry_at is not None else {})}
    if watched is not None:
        ctx.in_place += watched.new_in_place
        ctx.failures = 0 if watched.newer_checkpoint else ctx.failures
        fields.update(progress=watched.progress, checkpoint=watched.checkpoint)
    # Only ranks that run can be silent: a new attempt's silence starts with its first step.
    judged = recovery.stall(watched.progress, policy, ctx.now) if watched is not None and whole else None
    in_place_events = [recovery.in_place_event(watched, attempt, ctx.in_place)] if watched and watched.new_in_place else []

    failure = attempt_failure(current, nodes, ctx.name)
    if failure is None and judged is not None and judged.give_up:
        detail = f"{judged.describe()}: restarting the ranks in place did not bring it back within {judged.recovery}s more"
        failure = Failure("", Reason.PROGRESS_DEADLINE_EXCEEDED, detail)
    if failure is not None:
        decided = verdict(failure, policy, ctx.failures, attempt)
        ctx.failures += 0 if failure.disruption else 1
        if not decided.restart:
            return _end(ctx, Phase.FAILED, decided.reason, decided.message, **fields)
        ctx.attempt, ctx.restarts = attempt + 1, ctx.restarts + 1
        ctx.disruptions += 1 if failure.disruption else 0
        extra = {}
        if (condition(ctx.old, ConditionType.STALLED) or {}).get("status") == "True":
            extra[ConditionType.STALLED] = Cond("False", decided.reason, "the gang is recreated")
        status = ctx.status(Phase.RESTARTING, decided.reason, decided.message, extra, replicas=replicas(current), **fields)
        doomed = [p.name for p in current if not p.deleting]
        grace = recovery.STALLED_GRACE_SECONDS if failure.reason == Reason.PROGRESS_DEADLINE_EXCEEDED else None
        decision = ctx.decision(status, decided.reason, wake_after=min(timers), grace=grace, delete_pods=doomed)
        decision.events += in_place_events
        return decision

    if len(current) == nodes and all(p.phase == PodPhase.SUCCEEDED for p in current):
        message = f"training finished: all {nodes} pods of attempt {attempt} exited 0"
        # A program's last steps are known only as far as its endpoint was read: its progress stays as last seen.
        final = {} if spec.program else progress_mod.finished_status(
            spec.training.steps, ctx.old.get("progress"), ctx.old.get("checkpoint"), timestamp(ctx.now))
        return _end(ctx, Phase.SUCCEEDED, Reason.SUCCEEDED, message, **final)

    fields["startTime"] = ctx.old.get("startTime") or min((p.created for p in current if p.created), default=None)
    extra: dict[str, Cond] = {}
    missing = sorted(set(range(nodes)) - {p.rank for p in current})
    if missing and blocker is not None:
        extra[ConditionType.CREATED] = Cond("False", blocker.reason, blocker.message)
        status = ctx.status(Phase.PENDING, blocker.reason, blocker.message, extra, **fields)
        return ctx.decision(status, blocker.reason, wake_after=min(timers + [blocker.retry_after or ctx.timing.blocked_retry]))
    if not missing:
        extra[ConditionType.CREATED] = Cond("True", Reason.PODS_CREATED, f"attempt {attempt}: all {nodes} pods created")

    if whole and watched is not None and ctx.elastic is not None:
        grown = elastic.grow(ctx.job, ctx.elastic, probes)
        if grown is not None:
            return _resize(ctx, current, timers, grown)
    if whole and watched is not None:
        stalled, stall_events = recovery.stalled_condition(ctx.old, judged, bool(watched.new_in_place))
        extra.update(stalled)
        in_place = watched.progress.get("inPlaceRestarts") or 0
        reason = Reason.RESTARTED_IN_PLACE if in_place else Reason.PODS_RUNNING
        message = f"attempt {attempt}: all {nodes} pods running"
        if in_place:
            message += f"; the ranks were restarted in place {in_place} time(s) in this attempt"
        status = ctx.status(Phase.RUNNING, reason, message, extra, **fields)
        read_every = recovery.read_interval(ctx.timing.progress_interval, policy)
        wake = timers + [read_every] + ([judged.wake_after()] if judged is not None else [])
        decision = ctx.decision(status, reason, wake_after=min(wake), probes=elastic.probes_wanted(ctx.elastic))
        decision.events += stall_events + in_place_events
        return decision

    problem = _pending_problem(current)
    gated = [p for p in current if p.gates and not p.started]
    if not missing and gated:
        reason, message = Reason.WAITING_FOR_ADMISSION, _admission_message(attempt, nodes, spec, gated)
        extra[ConditionType.RUNNING] = Cond("False", reason, message)
    elif problem is not None:
        reason, message = problem
        extra[ConditionType.RUNNING] = Cond("False", reason, message)
    else:
        running = sum(1 for p in current if p.phase == PodPhase.RUNNING)
        reason = Reason.RESUMED if resumed else (Reason.CREATING_PODS if missing else Reason.PODS_STARTING)
        message = f"attempt {attempt}: {running} of {nodes} pods running"
        if missing:
            message = f"attempt {attempt}: creating {len(missing)} of {nodes} pods"
        if resumed:
            message = f"resumed: attempt {attempt} starts and resumes from the latest checkpoint"
    status = ctx.status(Phase.PENDING, reason, message, extra, **fields)
    create = {"create_attempt": attempt, "create_ranks": missing} if missing else {}
    startup = recovery.startup_wait(current, policy, ctx.now)
    return ctx.decision(status, reason, wake_after=min(timers + ([startup] if startup is not None else [])), **create)


def _resize(ctx: _Context, current: list[PodView], timers: list[float], change: resize.Resize) -> Decision:
    """The gang checkpoints at SIGTERM and the next attempt, of the new size, resumes from it: spec.nodes
    changed (`resize.as_specified`), or elastic mode shrinks or grows the gang (`elastic.shrink`, `elastic.grow`).

    Not a failure and not a disruption: the retry budget is untouched.
    """
    ctx.attempt, ctx.resizes = ctx.attempt + 1, ctx.resizes + 1
    ctx.elastic = change.elastic
    ctx.resized = {ConditionType.RESIZED: Cond("True", change.reason, change.message)}
    status = ctx.status(Phase.RESTARTING, change.reason, change.message, replicas=replicas(current), nodes=change.nodes)
    doomed = [p.name for p in current if not p.deleting]
    decision = ctx.decision(status, change.reason, wake_after=min(timers), delete_pods=doomed)
    # One Event for the resize, whatever phase it interrupts.
    decision.events = [Event(change.event_type, change.reason, change.message)]
    return decision


def _release(ctx: _Context, current: list[PodView], overdue: str, timers: list[float]) -> Decision:
    """The gang did not start whole in time: its pods go, and the next attempt comes after a pause; not a failure."""
    retry = ctx.now + timedelta(seconds=ctx.timing.startup_retry)
    attempt = ctx.attempt
    ctx.attempt += 1
    message = (f"attempt {attempt}: {overdue}. The pods are deleted, so they hold nothing others could use, and the gang "
               f"starts again as attempt {attempt + 1} at {timestamp(retry)}; not counted against runPolicy.backoffLimit")
    extra = {ConditionType.RUNNING: Cond("False", Reason.STARTUP_TIMEOUT, message)}
    status = ctx.status(Phase.PENDING, Reason.STARTUP_TIMEOUT, message, extra, nextAttemptTime=timestamp(retry), replicas=replicas(current))
    doomed = [p.name for p in current if not p.deleting]
    return ctx.decision(status, Reason.STARTUP_TIMEOUT, wake_after=min(timers + [ctx.timing.startup_retry]), delete_pods=doomed)


def _admission_message(attempt: int, nodes: int, spec: LMTrainingJobSpec, gated: list[PodView]) -> str:
    gates = ", ".join(sorted({gate for pod in gated for gate in pod.gates}))
    queue = f" in LocalQueue {spec.scheduling.queue}" if spec.scheduling.queue else ""
    return (
        f"attempt {attempt}: waiting for admission{queue}; {len(gated)} of {nodes} pods still carry the scheduling gate {gates}, "
        f"which is lifted for the whole gang at once when its quota is free"
    )


def _own_reason(old: dict[str, Any]) -> str:
    for cond in old.get("conditions") or []:
        if cond.get("type") == old.get("phase"):
            return cond.get("reason") or old.get("phase") or ""
    return old.get("phase") or ""
