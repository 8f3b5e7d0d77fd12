"""The LMTrainingJob status: what the operator writes back, declared once for the CRD."""

from __future__ import annotations

from dataclasses import dataclass

from kubespeed.spec.fields import field


class Phase:
    """`status.phase`: Pending -> Running -> Succeeded | Failed, with Suspended and Restarting on the way."""

    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


PHASES = (Phase.PENDING, Phase.RUNNING, Phase.RESTARTING, Phase.SUSPENDED, Phase.SUCCEEDED, Phase.FAILED)
TERMINAL_PHASES = (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType:
    """Condition types, following the API conventions: one True at a time among the lifecycle
    ones (those named after a phase); Created says whether the attempt's pods could be made,
    Stalled whether a Running job's step stopped advancing (runPolicy.progressDeadlineSeconds),
    Resized whether the gang has the size spec.nodes asks for (False: a resize was refused)."""

    CREATED = "Created"
    STALLED = "Stalled"
    RESIZED = "Resized"
    RUNNING = Phase.RUNNING
    RESTARTING = Phase.RESTARTING
    SUSPENDED = Phase.SUSPENDED
    SUCCEEDED = Phase.SUCCEEDED
    FAILED = Phase.FAILED


CONDITION_TYPES = (ConditionType.CREATED, ConditionType.STALLED, ConditionType.RESIZED, ConditionType.RUNNING, ConditionType.RESTARTING,
                   ConditionType.SUSPENDED, ConditionType.SUCCEEDED, ConditionType.FAILED)


class Reason:
    """Every reason the operator writes into a condition or an Event: automation matches on these."""

    # Starting and running.
    CREATING_PODS = "CreatingPods"
    PODS_CREATED = "PodsCreated"
    PODS_STARTING = "PodsStarting"
    PODS_RUNNING = "PodsRunning"
    WAITING_FOR_OLD_PODS = "WaitingForOldPods"
    # Pods are created but gated: a queue (Kueue) has not admitted the whole gang yet.
    WAITING_FOR_ADMISSION = "WaitingForAdmission"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    SUCCEEDED = "Succeeded"
    # The attempt ended: the gang restarts or the job fails.
    POD_FAILED = "PodFailed"
    POD_DISRUPTED = "PodDisrupted"
    POD_DELETED = "PodDeleted"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONFIG_ERROR = "ConfigError"
    DATA_ERROR = "DataError"
    NO_GPU_VISIBLE = "NoGPUVisible"
    PERMANENT_EXIT_CODE = "PermanentExitCode"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    INVALID_SPEC = "InvalidSpec"
    # The attempt's objects could not be created.
    CLAIM_NOT_FOUND = "ClaimNotFound"
    QUOTA_EXCEEDED = "QuotaExceeded"
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
    API_NOT_INSTALLED = "APINotInstalled"
    CREATE_FAILED = "CreateFailed"
    # Objects of a deleted job of the same name (another owner UID) still hold the names.
    WAITING_FOR_OLD_OBJECTS = "WaitingForOldObjects"
    # Recovery: in place (the pods' launchers restarted the ranks) or by recreating the gang.
    RESTARTED_IN_PLACE = "RestartedInPlace"
    IN_PLACE_RECOVERY_FAILED = "InPlaceRecoveryFailed"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    STEP_ADVANCED = "StepAdvanced"
    STARTUP_TIMEOUT = "StartupTimeout"
    # A change of spec.nodes: the gang checkpoints and comes back at the new size; or the new size
    # cannot run (a program's DeepSpeed batch sizes do not divide it) and the gang goes on as it is.
    RESIZING = "Resizing"
    RESIZE_REFUSED = "ResizeRefused"
    SIZE_AS_SPECIFIED = "SizeAsSpecified"
    # Elastic mode (spec.elastic): pods that cannot be scheduled shrink the gang; a capacity probe placed grows it back.
    ELASTIC_SHRINK = "ElasticShrink"
    ELASTIC_GROW = "ElasticGrow"


@dataclass(kw_only=True)
class Condition:
    """One observation of the job's state, as in the Kubernetes API conventions."""

    type: str = field("Condition type: Created, Stalled, Resized, Running, Restarting, Suspended, Succeeded or Failed.")
    status: str = field("True, False or Unknown.", enum=("True", "False", "Unknown"))
    reason: str | None = field("CamelCase reason, for machines.", None)
    message: str | None = field("What happened and what to do, for people.", None)
    lastTransitionTime: str | None = field("When the status last changed (RFC 3339).", None)
    observedGeneration: int | None = field("The spec generation this condition was computed from.", None)


@dataclass(kw_only=True)
class ReplicaStatus:
    """Pods of the current attempt by state."""

    active: int = field("Pods not yet finished.", 0)
    ready: int = field("Pods running and ready.", 0)
    succeeded: int = field("Pods that exited 0.", 0)
    failed: int = field("Pods that failed.", 0)


@dataclass(kw_only=True)
class ProgressStatus:
    """Training progress read from rank 0's metrics endpoint."""

    step: int | None = field("Optimizer steps done.", None)
    totalSteps: int | None = field("Steps the job trains for.", None)
    loss: str | None = field("Latest training loss.", None)
    tokensPerSecond: str | None = field("Training throughput over all ranks.", None)
    eta: str | None = field("Estimated time left, e.g. 1h02m.", None)
    inPlaceRestarts: int | None = field("In-place restarts of the ranks during the current attempt, as rank 0 last reported them.", None)
    lastAdvanceTime: str | None = field("When the step was last seen to advance in the ranks' current run, unset while they start (RFC 3339); runPolicy.progressDeadlineSeconds counts from it.", None)
    updateTime: str | None = field("When progress was last read (RFC 3339).", None)


@dataclass(kw_only=True)
class CheckpointStatus:
    """The latest complete checkpoint."""

    step: int | None = field("Step of the latest complete checkpoint.", None)
    path: str | None = field("Its path inside the checkpoint volume.", None)
    time: str | None = field("When it was completed (RFC 3339).", None)


@dataclass(kw_only=True)
class ElasticStatus:
    """The size elastic mode chose in place of spec.nodes, while capacity is missing."""

    nodes: int = field("The gang's size as elastic mode chose it: the largest that could run, minNodes and the global batch allow.")
    specNodes: int = field("spec.nodes when it was chosen; a change of spec.nodes (or removing spec.elastic) ends the choice.")
    message: str | None = field("Why: which pods could not be scheduled, and how the size was chosen.", None)


@dataclass(kw_only=True)
class LMTrainingJobStatus:
    """What the operator observed; computed from the job's children."""

    phase: str | None = field("Pending, Running, Restarting, Suspended, Succeeded or Failed.", None, enum=PHASES)
    message: str | None = field("A sentence on the current state.", None)
    conditions: list[Condition] = field("Conditions, newest state of each type.", [])
    replicas: ReplicaStatus | None = field("Pods of the current attempt by state.", None)
    nodes: int | None = field("Pods in the current attempt's gang: spec.nodes once a resize has taken effect, or status.elastic.nodes (`kubectl scale` reads it).", None)
    selector: str | None = field("The label selector of the job's pods, for `kubectl scale` and autoscalers.", None)
    resizes: int | None = field("Resizes so far: gangs replaced by one of another size (a change of spec.nodes, or elastic mode shrinking on lost capacity and growing back), each resuming from the checkpoint written at SIGTERM; never counted against runPolicy.backoffLimit.", None)
    elastic: ElasticStatus | None = field("Set while elastic mode runs the gang smaller than spec.nodes because pods could not be scheduled; gone once it is back at spec.nodes.", None)
    attempt: int | None = field("The current attempt, from 1; each gang restart starts a new one.", None)
    restarts: int | None = field("Gang restarts so far, after a failure or a disruption: every pod of the attempt deleted and created again as the next attempt.", None)
    disruptions: int | None = field("Gang restarts caused by a disruption (preemption, eviction, a drained or lost node, SIGTERM); they do not count against runPolicy.backoffLimit.", None)
    inPlaceRestarts: int | None = field("In-place restarts so far, over all attempts: the pods' launchers (torch elastic) restarted every rank in the same pods after a rank failed; counted by rank 0.", None)
    consecutiveFailures: int | None = field("Failures since a newer complete checkpoint was last seen (gang restarts after failures; disruptions and gangs that did not start in time do not count); runPolicy.backoffLimit bounds it.", None)
    nextAttemptTime: str | None = field("When the gang is created again after its pods did not all run within runPolicy.startupTimeoutSeconds (RFC 3339).", None)
    startTime: str | None = field("When the first attempt's pods were created.", None)
    completionTime: str | None = field("When the job succeeded or failed.", None)
    progress: ProgressStatus | None = field("Training progress.", None)
    checkpoint: CheckpointStatus | None = field("The latest complete checkpoint.", None)
    observedGeneration: int | None = field("The spec generation the operator last acted on.", None)
