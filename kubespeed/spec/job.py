"""The LMTrainingJob spec: every field, its default and its description, declared once.

The CRD schema (`kubespeed crd`), the trainer's config file and `kubespeed local`
all read these classes. Field names are the camelCase names users write in YAML.
The trainer config is the five training sections (`TrainerConfig`), passed
through unchanged from the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubespeed import wiring
from kubespeed.spec.fields import field
from kubespeed.spec.podtemplate import RESERVED_ENV, PodTemplate, check_template
from kubespeed.spec.program import ProgramSpec, check_deepspeed_config
from kubespeed.spec.resources import Resources
from kubespeed.spec.rules import rule

GPT_SIZES = ("tiny", "mini", "small", "gpt-125m", "gpt-350m", "gpt-760m", "gpt-1b")
MODEL_TYPES = ("gpt", "hf", "lstm")
DATA_FORMATS = ("text", "jsonl", "tokens")
TOKENIZER_TYPES = ("char", "byte", "bpe", "pretrained")
OBJECTIVES = ("causal", "denoising", "finetune")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OFFLOAD_DEVICES = ("none", "cpu")
RESUME_POLICIES = ("auto", "never", "required")
RESTART_POLICIES = ("ExitCode", "OnFailure", "Never")
CLEAN_POD_POLICIES = ("Running", "All", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SHARED_CHECKPOINT_MESSAGE = (
    "a job of several nodes needs a checkpoint volume they all share, or its checkpoints can neither be "
    "resumed nor exported (each pod's own disk holds only its ranks' shards): set checkpoint.volumeClaim "
    "(the operator creates a ReadWriteMany claim) or checkpoint.claimName (an existing ReadWriteMany claim)"
)
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
# Said of a field that configures the built-in trainer: a job with `program` refuses it, so
# the CRD lists no default for it (a default would be indistinguishable from a value set).
TRAINER_ONLY = "the built-in trainer's, default applied by kubespeed; refused with `program`."
# `data.train: builtin:<name>` names text the installation carries instead of a path.
BUILTIN_DATA_PREFIX = "builtin:"

# The job's name becomes the headless Service's name (a DNS-1035 label: it starts with a
# letter) and the prefix of pod hostnames `<job>-<rank>` (63 characters at most, ranks up
# to 4 digits since `nodes` is at most 1024).
JOB_NAME_PATTERN = r"[a-z]([-a-z0-9]*[a-z0-9])?"
JOB_NAME_MAX_LENGTH = 58



def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


# ---------------------------------------------------------------- model

@dataclass(kw_only=True)
class ModelSpec:
    """The network to train: the built-in GPT, any Hugging Face causal LM, or the LSTM language model."""

    type: str = field("Model family: `gpt` (built-in GPT decoder), `hf` (Hugging Face causal LM from `hfConfig` or a local `path`), `lstm` (embedding, LSTM, linear head).", "gpt", enum=MODEL_TYPES)
    size: str = field("Named built-in GPT recipe, from `tiny` to `gpt-1b`; `layers`, `heads` and `embedDim` override parts of it.", "tiny", enum=GPT_SIZES)
    layers: int | None = field("Number of transformer blocks (gpt) or LSTM layers (lstm); overrides the recipe.", None, minimum=1, maximum=256)
    heads: int | None = field("Attention heads (gpt); must divide `embedDim`.", None, minimum=1, maximum=256)
    embedDim: int | None = field("Embedding width (gpt, lstm).", None, minimum=8, maximum=32768)
    hiddenDim: int | None = field("LSTM hidden size (lstm); defaults to `embedDim`.", None, minimum=8, maximum=32768)
    dropout: float = field("Dropout probability in the model.", 0.0, minimum=0.0, maximum=0.9)
    tieWeights: bool = field("Share the token embedding with the output head (gpt, lstm).", True)
    hfConfig: dict[str, Any] | None = field("A Hugging Face model config (as in config.json, with `model_type`), built with random weights; for type `hf`.", None)
    path: str | None = field("A local directory with a Hugging Face model (config.json and weights); for type `hf`. Nothing is downloaded.", None, min_length=1)

    __cel__ = (
        rule("self.type != 'hf' || has(self.hfConfig) || has(self.path)", "type hf needs hfConfig or path", ".hfConfig"),
        rule("self.type == 'hf' || !has(self.hfConfig)", "hfConfig only applies to type hf", ".hfConfig"),
        rule("self.type == 'hf' || !has(self.path)", "path only applies to type hf", ".path"),
        rule("!has(self.heads) || !has(self.embedDim) || self.embedDim % self.heads == 0", "heads must divide embedDim", ".heads"),
    )


# ---------------------------------------------------------------- data

@dataclass(kw_only=True)
class TokenizerSpec:
    """How text becomes tokens."""

    type: str = field("`char` (characters seen in the training text), `byte` (UTF-8 bytes, 256 ids), `bpe` (byte-level BPE trained on the training text), `pretrained` (a tokenizer from the local directory `path`).", "char", enum=TOKENIZER_TYPES)
    vocabSize: int = field("Vocabulary size for a `bpe` tokenizer trained here.", 4096, minimum=260, maximum=262144)
    path: str | None = field("Local directory of a Hugging Face tokenizer; for type `pretrained`.", None, min_length=1)

    __cel__ = (rule("self.type != 'pretrained' || has(self.path)", "type pretrained needs a tokenizer directory", ".path"),)


@dataclass(kw_only=True)
class DataSpec:
    """Training and validation data, its format and tokenizer."""

    train: str = field("Training data: a file or directory path inside the pod (a mounted volume or the image), or `builtin:<name>` for text the installation carries (see README).", min_length=1)
    validation: str | None = field("Validation data; when unset, the last `validationSplit` of the training data is held out.", None, min_length=1)
    format: str = field("`text` (plain text), `jsonl` (one JSON object per line, see `textField`/`promptField`/`responseField`), `tokens` (token shards written by `kubespeed prepare`).", "text", enum=DATA_FORMATS)
    textField: str = field("JSON lines key holding the text, for `jsonl` pre-training data.", "text", min_length=1)
    promptField: str = field("JSON lines key holding the prompt, for fine-tuning data.", "prompt", min_length=1)
    responseField: str = field("JSON lines key holding the response, for fine-tuning data; only response tokens carry loss.", "response", min_length=1)
    validationSplit: float = field("Fraction of the training data held out for validation when `validation` is unset.", 0.1, minimum=0.0, maximum=0.5)
    tokenizer: TokenizerSpec = field("The tokenizer.", TokenizerSpec())
    claimName: str | None = field("An existing PersistentVolumeClaim mounted read-only at /data in every pod, holding the data.", None, pattern=DNS_LABEL)


# ---------------------------------------------------------------- training

@dataclass(kw_only=True)
class OptimizerSpec:
    """The optimizer; DeepSpeed builds it (and offloads it when asked)."""

    type: str = field("Optimizer: `adamw`, `adam` or `sgd`.", "adamw", enum=OPTIMIZERS)
    lr: float = field("Peak learning rate.", 3e-4, minimum=0.0, exclusive_minimum=True, maximum=10.0)
    weightDecay: float = field("Decoupled weight decay (adamw), L2 (adam, sgd).", 0.1, minimum=0.0, maximum=1.0)
    beta1: float = field("Adam beta1 (sgd: momentum).", 0.9, minimum=0.0, maximum=1.0)
    beta2: float = field("Adam beta2.", 0.95, minimum=0.0, maximum=1.0)
    eps: float = field("Adam epsilon.", 1e-8, minimum=0.0, exclusive_minimum=True, maximum=1.0)


@dataclass(kw_only=True)
class ScheduleSpec:
    """Learning-rate schedule: linear warmup, then decay to `minLr`."""

    warmupSteps: int = field("Steps of linear warmup from 0 to the peak learning rate.", 100, minimum=0)
    decay: str = field("Shape after warmup: `cosine`, `linear` or `constant`.", "cosine", enum=SCHEDULES)
    minLr: float = field("Learning rate at the last step (cosine, linear).", 3e-5, minimum=0.0)


@dataclass(kw_only=True)
class DenoisingSpec:
    """Span corruption for the denoising-autoencoder objective."""

    corruptionRate: float = field("Fraction of tokens replaced by noise.", 0.15, minimum=0.0, exclusive_minimum=True, maximum=0.9)
    meanSpanLength: float = field("Mean length of a corrupted span, in tokens.", 3.0, minimum=1.0, maximum=64.0)


@dataclass(kw_only=True)
class TrainingSpec:
    """What is optimised, for how long, and in what batches."""

    objective: str = field("`causal` (next-token pre-training), `denoising` (reconstruct the original from corrupted spans), `finetune` (start from `initFrom`; prompt/response data trains on responses only).", "causal", enum=OBJECTIVES)
    steps: int = field("Optimizer steps to train.", 1000, minimum=1, maximum=100_000_000)
    globalBatchSize: int = field("Sequences per optimizer step over all data-parallel ranks; gradient accumulation = globalBatchSize / (microBatchSize x data-parallel size).", 32, minimum=1)
    microBatchSize: int = field("Sequences per rank per forward pass.", 8, minimum=1)
    seqLength: int = field("Tokens per training sequence (the model's context length for gpt).", 256, minimum=8, maximum=131072)
    gradientClipping: float = field("Clip the global gradient norm to this value; 0 turns clipping off.", 1.0, minimum=0.0)
    optimizer: OptimizerSpec = field("The optimizer.", OptimizerSpec())
    schedule: ScheduleSpec = field("The learning-rate schedule.", ScheduleSpec())
    evalInterval: int = field("Evaluate on validation data every this many steps (and at the end); 0 evaluates only at the end.", 200, minimum=0)
    evalBatches: int = field("Validation micro batches per evaluation, per rank.", 20, minimum=1)
    logInterval: int = field("Write a metrics line every this many steps.", 10, minimum=1)
    seed: int = field("Seed for weights, data order and noise; the same seed repeats the same run.", 1234, minimum=0)
    denoising: DenoisingSpec = field("Span corruption, for objective `denoising`.", DenoisingSpec())
    initFrom: str | None = field("A checkpoint directory or exported weights to start from, for objective `finetune`.", None, min_length=1)

    __cel__ = (
        rule("self.globalBatchSize % self.microBatchSize == 0", "globalBatchSize must be a multiple of microBatchSize", ".globalBatchSize"),
        rule("self.objective != 'finetune' || has(self.initFrom)", "objective finetune needs initFrom, a checkpoint or weights to start from", ".initFrom"),
        rule("self.schedule.minLr <= self.optimizer.lr", "schedule.minLr must not exceed optimizer.lr", ".schedule.minLr"),
    )


# ---------------------------------------------------------------- deepspeed

@dataclass(kw_only=True)
class LossScaleSpec:
    """Dynamic loss scaling for fp16."""

    initialScalePower: int = field("The first loss scale is 2^this.", 16, minimum=0, maximum=32)
    window: int = field("Steps without overflow before the scale doubles.", 1000, minimum=1)
    hysteresis: int = field("Overflows tolerated before the scale halves.", 2, minimum=1)
    minScale: int = field("The loss scale never drops below this (a whole number: DeepSpeed's fp16 config takes no fraction).", 1, minimum=1)


@dataclass(kw_only=True)
class OffloadSpec:
    """ZeRO-Offload: keep optimizer state or parameters in host memory."""

    optimizer: str = field("Where optimizer state lives: `none` (the accelerator) or `cpu` (ZeRO stage 1-3).", "none", enum=OFFLOAD_DEVICES)
    parameters: str = field("Where parameters live between uses: `none` or `cpu` (ZeRO stage 3 only).", "none", enum=OFFLOAD_DEVICES)


@dataclass(kw_only=True)
class DeepSpeedSpec:
    """DeepSpeed engine settings; everything else is derived or comes from `overrides`."""

    zeroStage: int = field("ZeRO stage: 0 (plain data parallel), 1 (shard optimizer state), 2 (+ gradients), 3 (+ parameters).", 0, minimum=0, maximum=3)
    precision: str = field("`auto` (bf16 on GPUs that support it, else fp32), `fp32`, `fp16` (with dynamic loss scaling) or `bf16`.", "auto", enum=PRECISIONS)
    lossScale: LossScaleSpec = field("Dynamic loss scaling, for fp16.", LossScaleSpec())
    offload: OffloadSpec = field("Optimizer and parameter offload to host memory.", OffloadSpec())
    activationCheckpointing: bool = field("Recompute activations in the backward pass to save memory (gpt, hf).", False)
    pipelineStages: int = field("Pipeline-parallel stages (built-in gpt only); data-parallel size = nodes x procsPerNode / pipelineStages.", 1, minimum=1, maximum=64)
    compile: bool = field("Compile the model with torch.compile (TorchInductor) for faster steps: gpt and hf models without pipeline stages; the LSTM and pipeline stages run as they are. "
                          "Compiling costs seconds to a minute at the first step; the kernels are cached in the checkpoint volume (`compile-cache/`), so a resumed run, a gang restart or a re-run reuses them. "
                          "Needs a C/C++ compiler and Python's headers where the trainer runs (the kubespeed trainer image has them); without them the trainer warns and trains uncompiled. "
                          "Off by default: on a CPU the first step of a small model takes tens of CPU-seconds more, which only runs of thousands of steps repay.", False)
    overrides: dict[str, Any] = field("Raw DeepSpeed config merged over the resolved one, last; for settings kubespeed does not name.", {})

    __cel__ = (
        rule("self.offload.parameters != 'cpu' || self.zeroStage == 3", "parameter offload needs zeroStage 3", ".offload.parameters"),
        rule("self.offload.optimizer != 'cpu' || self.zeroStage > 0", "optimizer offload needs zeroStage 1, 2 or 3", ".offload.optimizer"),
        rule("self.pipelineStages == 1 || self.zeroStage <= 1", "pipeline parallelism works with zeroStage 0 or 1", ".zeroStage"),
        rule("self.pipelineStages == 1 || (self.offload.optimizer == 'none' && self.offload.parameters == 'none')", "offload does not combine with pipeline parallelism", ".offload"),
    )


# ---------------------------------------------------------------- checkpoint

@dataclass(kw_only=True)
class VolumeClaimTemplate:
    """A PersistentVolumeClaim the operator creates as `<job>-checkpoints`; it outlives the job unless `deleteWithJob`."""

    size: str = field("Requested storage, e.g. `20Gi`.", "10Gi", pattern=r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?")
    storageClassName: str | None = field("Storage class; the cluster default when unset.", None)
    accessMode: str = field("`ReadWriteMany` lets every node rank write its shard; `ReadWriteOnce` suits one-node jobs.", "ReadWriteMany", enum=("ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"))
    deleteWithJob: bool = field("Delete the claim, and the checkpoints in it, when the job is deleted (also by ttlSecondsAfterFinished). By default the checkpoints stay for fine-tuning, evaluation or a re-run.", False)


@dataclass(kw_only=True)
class CheckpointSpec:
    """Where checkpoints go, how often, how many stay, and how a new attempt resumes."""

    claimName: str | None = field("An existing PersistentVolumeClaim for checkpoints (ReadWriteMany for several nodes). Without it or `volumeClaim`, checkpoints live in the pod (lost with it), which only a one-node job may do.", None, pattern=DNS_LABEL)
    volumeClaim: VolumeClaimTemplate | None = field("Ask the operator to create the checkpoint claim.", None)
    mountPath: str = field("Where the checkpoint volume is mounted in every pod.", wiring.CHECKPOINT_DIR_DEFAULT, pattern=r"/.*")
    interval: int = field(f"Save every this many steps (and on SIGTERM, and at the end); {TRAINER_ONLY}", 100, minimum=1, crd_default=False)
    keep: int = field(f"Complete checkpoints kept; older ones are deleted; {TRAINER_ONLY}", 3, minimum=1, maximum=1000, crd_default=False)
    resume: str = field(f"`auto` (resume from the latest complete checkpoint if one exists), `never` (always start fresh), `required` (fail if none exists); {TRAINER_ONLY}", "auto", enum=RESUME_POLICIES, crd_default=False)
    exportWeights: bool = field(f"At the end, export the final weights as safetensors with a Hugging Face config; {TRAINER_ONLY}", True, crd_default=False)

    __cel__ = (rule("!has(self.claimName) || !has(self.volumeClaim)", "set either claimName or volumeClaim, not both", ".volumeClaim"),)


# ---------------------------------------------------------------- run policy and scheduling

@dataclass(kw_only=True)
class RunPolicy:
    """Recovery (in place first, then the gang), deadlines, cleanup and suspension."""

    backoffLimit: int = field(
        "Failures in a row the job survives. A failure that ends an attempt (a failed pod, a stall, in-place restarts spent) "
        "recreates the gang, unless backoffLimit failures came before it with no newer complete checkpoint seen in between: "
        "then the job fails (reason BackoffLimitExceeded). A newer checkpoint sets the count (status.consecutiveFailures) "
        "back to 0, so a long run that keeps saving progress is never failed by occasional crashes. Disruptions (preemption, "
        "eviction, a drained node, SIGTERM), a gang that did not start in time and in-place restarts never count.",
        3, minimum=0, maximum=1000)
    maxInPlaceRestarts: int = field(
        "In-place restarts per attempt: after a rank fails, the launchers in the pods (torch elastic) stop and start every "
        "rank again in the same pods, which resume from the latest complete checkpoint in seconds; pods, their addresses "
        "and the scheduler are untouched. Once they are spent, or a pod or node is lost, the operator recreates the gang "
        "as a new attempt. 0 recreates the gang on every failure. A change applies from the next attempt.",
        3, minimum=0, maximum=100)
    startupTimeoutSeconds: int = field(
        "Start whole or not at all: the longest an attempt's pods may take to all be running, in seconds. Past it they are "
        "deleted and the gang is tried again later (status.nextAttemptTime), without counting against backoffLimit; the "
        "Running condition names the pods that were missing and why. It also bounds how long the pods' launchers wait for "
        "each other in a rendezvous, at start and after an in-place restart, and, with progressDeadlineSeconds set, how long "
        "the ranks may take from their start to their first step.",
        600, minimum=10, maximum=86400)
    progressDeadlineSeconds: int | None = field(
        "Hang detection, off when unset: the longest a Running job may go without its training step advancing, in seconds, "
        "counted from the ranks' first step (at the start and after an in-place restart; their start-up is bounded by "
        "startupTimeoutSeconds instead). Every rank runs each step under torch elastic's watchdog with this deadline, so a "
        "rank that freezes is killed and the ranks restart in place; the operator, reading rank 0's step, sets the Stalled "
        "condition past the deadline and recreates the gang (a failure) if the step is still silent startupTimeoutSeconds "
        "later. It must cover the slowest step with a checkpoint save or an evaluation.",
        None, minimum=10, maximum=604800)
    restartPolicy: str = field("`ExitCode` (restart the gang unless the trainer's exit code says a retry cannot help), `OnFailure` (restart on any failure), `Never`.", "ExitCode", enum=RESTART_POLICIES)
    activeDeadlineSeconds: int | None = field("Fail the job (reason DeadlineExceeded) this many seconds after its pods first started, across gang restarts; suspending and resuming starts the count again, as for a batch Job.", None, minimum=1)
    ttlSecondsAfterFinished: int | None = field("Delete the job and its children this long after it succeeds or fails.", None, minimum=0)
    suspend: bool = field("Suspend: pods go, config and checkpoints stay; setting it back to false starts a new attempt that resumes.", False)
    cleanPodPolicy: str = field("Pods deleted when the job finishes: `Running` (still-running ones), `All`, `None`.", "Running", enum=CLEAN_POD_POLICIES)
    terminationGracePeriodSeconds: int = field("Seconds a pod gets after SIGTERM to write its checkpoint.", 120, minimum=1, maximum=86400)


@dataclass(kw_only=True)
class GangSpec:
    """Gang scheduling through a PodGroup (scheduler-plugins coscheduling or Volcano)."""

    enabled: bool = field("Create a PodGroup with minMember = nodes and point the pods at it.", False)
    apiVersion: str = field("PodGroup API: `scheduling.x-k8s.io/v1alpha1` (scheduler-plugins) or `scheduling.volcano.sh/v1beta1`.", "scheduling.x-k8s.io/v1alpha1", enum=("scheduling.x-k8s.io/v1alpha1", "scheduling.volcano.sh/v1beta1"))
    scheduleTimeoutSeconds: int = field("How long the gang may wait for all its pods to fit.", 300, minimum=1)


@dataclass(kw_only=True)
class Toleration:
    """A node taint the pods tolerate, as in a Pod spec."""

    key: str | None = field("Taint key; unset with operator Exists tolerates every taint.", None)
    operator: str = field("`Equal` (key and value match) or `Exists` (the key matches, whatever the value).", "Equal", enum=("Equal", "Exists"))
    value: str | None = field("Taint value, for operator Equal.", None)
    effect: str | None = field("Taint effect tolerated: `NoSchedule`, `PreferNoSchedule` or `NoExecute`; every effect when unset.", None, enum=("NoSchedule", "PreferNoSchedule", "NoExecute"))
    tolerationSeconds: int | None = field("For NoExecute: how long a pod stays after the taint appears; forever when unset.", None, minimum=0)

    __cel__ = (rule("self.operator != 'Exists' || !has(self.value)", "operator Exists takes no value", ".value"),)


@dataclass(kw_only=True)
class SchedulingSpec:
    """Where pods may run, and hooks for gang schedulers and queues."""

    nodeSelector: dict[str, str] = field("Node labels every pod requires.", {})
    tolerations: list[Toleration] = field("Extra tolerations (the GPU taint is tolerated already when gpu is true).", [])
    affinity: dict[str, Any] | None = field("Pod affinity rules, as in a Pod spec.", None)
    priorityClassName: str | None = field("PriorityClass of the pods.", None)
    schedulerName: str | None = field("Scheduler for the pods (e.g. volcano); the default scheduler when unset.", None)
    gang: GangSpec = field("Gang scheduling.", GangSpec())
    queue: str | None = field("Kueue LocalQueue name; sets the `kueue.x-k8s.io/queue-name` label so Kueue admits the job.", None, pattern=DNS_LABEL)


@dataclass(kw_only=True)
class ElasticSpec:
    """Elastic mode: bounds on the gang's size, and shrinking to the capacity left when nodes are lost."""

    minNodes: int = field("The fewest pods the job may be resized to, by `nodes` or by shrinking on lost capacity.", minimum=1, maximum=1024)
    maxNodes: int = field("The most pods the job may be resized to (`nodes`, `kubectl scale`).", minimum=1, maximum=1024)
    shrinkAfterSeconds: int = field(
        "How long a pod of the gang may stay Pending Unschedulable (its node lost, cordoned or full) before the job shrinks "
        "to the pods that can run, in seconds: the ranks checkpoint at SIGTERM and a smaller gang resumes from it, of the "
        "largest size up to what can run that minNodes and the global batch allow (status.elastic). `nodes` stays as "
        "written; the operator keeps capacity probes (pods `<job>-probe-<i>` that hold no GPU work) pending for the "
        "missing pods and grows the job back when the scheduler places one. Below minNodes nothing shrinks, and "
        "runPolicy.startupTimeoutSeconds releases the gang as without elastic; it must therefore be shorter than that.",
        300, minimum=1, maximum=86400)

    __cel__ = (rule("self.minNodes <= self.maxNodes", "elastic.minNodes must not exceed elastic.maxNodes", ".minNodes"),)


@dataclass(kw_only=True)
class EnvVar:
    """An environment variable for the trainer container."""

    name: str = field(f"Variable name; not one the pod wiring sets ({', '.join(RESERVED_ENV)}).", pattern=r"[-._a-zA-Z][-._a-zA-Z0-9]*")
    value: str = field("Value.", "")

    __cel__ = (rule(f"!(self.name in {_cel_list(RESERVED_ENV)})", "name is set by kubespeed's pod wiring and cannot be overridden", ".name"),)


# ---------------------------------------------------------------- the job

# The sections a job may leave out, in which case their defaults apply.
SECTION_CLASSES: dict[str, type] = {"model": ModelSpec, "training": TrainingSpec, "deepspeed": DeepSpeedSpec}

# Rules across the training sections; they hold for a job's spec and for a trainer config alike.
TRAINING_RULES = (
    rule("self.deepspeed.pipelineStages == 1 || self.model.type == 'gpt'", "pipeline parallelism needs model type gpt", ".deepspeed.pipelineStages"),
    rule("!self.deepspeed.activationCheckpointing || self.model.type != 'lstm'", "activation checkpointing applies to gpt and hf models, not lstm", ".deepspeed.activationCheckpointing"),
    rule(
        "self.deepspeed.offload.optimizer != 'cpu' || self.training.optimizer.type != 'sgd'",
        "optimizer offload runs DeepSpeed's CPU Adam: it needs optimizer adam or adamw, not sgd",
        ".deepspeed.offload.optimizer",
    ),
)


def _value(section: str, name: str) -> str:
    """CEL for a training section's field, its default when the section is left out (the CRD does not default it)."""
    default = getattr(SECTION_CLASSES[section](), name)
    return f"(has(self.{section}) ? self.{section}.{name} : {default!r})"


def _when_set(training_rule: dict[str, str]) -> dict[str, str]:
    """A rule across training sections, for the job: a section left out holds its defaults, which every such rule accepts."""
    sections = [name for name in SECTION_CLASSES if f"self.{name}." in training_rule["rule"]]
    guard = " || ".join(f"!has(self.{name})" for name in sections)
    return {**training_rule, "rule": f"{guard} || ({training_rule['rule']})"}


@dataclass(kw_only=True)
class TrainerConfig:
    """The trainer's own config file: the job's five training sections, unchanged."""

    __cel__ = TRAINING_RULES

    model: ModelSpec = field("The model.", ModelSpec())
    data: DataSpec = field("The data.")
    training: TrainingSpec = field("The training run.", TrainingSpec())
    deepspeed: DeepSpeedSpec = field("DeepSpeed engine settings.", DeepSpeedSpec())
    checkpoint: CheckpointSpec = field("Checkpoints and resume.", CheckpointSpec())


TRAINER_SECTIONS = ("model", "data", "training", "deepspeed", "checkpoint")


@dataclass(kw_only=True)
class LMTrainingJobSpec:
    """A DeepSpeed language-model training job: a gang of `nodes` pods, each running `procsPerNode` ranks."""

    __cel__ = (
        rule(
            f"(self.nodes * self.procsPerNode) % {_value('deepspeed', 'pipelineStages')} == 0",
            "nodes x procsPerNode must be a multiple of deepspeed.pipelineStages",
            ".deepspeed.pipelineStages",
        ),
        rule(
            f"{_value('training', 'globalBatchSize')} % ({_value('training', 'microBatchSize')} * (self.nodes * self.procsPerNode / {_value('deepspeed', 'pipelineStages')})) == 0",
            "training.globalBatchSize must be a multiple of training.microBatchSize x data-parallel size (nodes x procsPerNode / deepspeed.pipelineStages)",
            ".training.globalBatchSize",
        ),
        *(_when_set(r) for r in TRAINING_RULES),
        rule(
            "!has(self.checkpoint.volumeClaim) || self.nodes == 1 || self.checkpoint.volumeClaim.accessMode == 'ReadWriteMany'",
            "a job of several nodes needs a ReadWriteMany checkpoint volume: every node writes its shard",
            ".checkpoint.volumeClaim.accessMode",
        ),
        rule(
            "self.nodes == 1 || has(self.checkpoint.claimName) || has(self.checkpoint.volumeClaim)",
            SHARED_CHECKPOINT_MESSAGE,
            ".checkpoint",
        ),
        rule(
            "!has(self.elastic) || (self.nodes >= self.elastic.minNodes && self.nodes <= self.elastic.maxNodes)",
            "nodes must lie within elastic.minNodes and elastic.maxNodes",
            ".nodes",
        ),
        rule(
            "!has(self.elastic) || self.elastic.shrinkAfterSeconds < self.runPolicy.startupTimeoutSeconds",
            "elastic.shrinkAfterSeconds must be shorter than runPolicy.startupTimeoutSeconds: a gang that has not started "
            "whole by then is released and retried at the same size, so it would never shrink",
            ".elastic.shrinkAfterSeconds",
        ),
        rule(
            "!has(self.elastic) || self.elastic.maxNodes == 1 || has(self.checkpoint.claimName) || has(self.checkpoint.volumeClaim)",
            "elastic.maxNodes above 1 lets the job grow to several nodes, which need a checkpoint volume they all share: "
            "set checkpoint.volumeClaim or checkpoint.claimName",
            ".elastic.maxNodes",
        ),
        rule(
            f"!has(self.elastic) || {_value('training', 'globalBatchSize')} % ({_value('training', 'microBatchSize')} * "
            f"(self.elastic.minNodes * self.procsPerNode / {_value('deepspeed', 'pipelineStages')})) == 0",
            "training.globalBatchSize must be a multiple of training.microBatchSize x the data-parallel size at elastic.minNodes, "
            "the smallest size the job may be given",
            ".elastic.minNodes",
        ),
        rule("has(self.program) || has(self.data)", "data is required: the built-in trainer's training text (or set program to run your own)", ".data"),
        *(
            rule(f"!has(self.program) || !has(self.{section})", f"{section} configures the built-in trainer and does not apply to a program; leave it out", f".{section}")
            for section in ("model", "data", "training", "deepspeed")
        ),
        # Adding or removing a section escapes the immutability rule on the section itself, which compares two values.
        *(
            rule(f"has(self.{section}) == has(oldSelf.{section})", f"{section} cannot change once the job exists", f".{section}")
            for section in ("program", "model", "data", "training", "deepspeed")
        ),
        *(
            rule(f"!has(self.program) || !has(self.checkpoint.{name})", f"checkpoint.{name} configures the built-in trainer; a program saves and resumes as it chooses (see README)", f".checkpoint.{name}")
            for name in ("interval", "keep", "resume", "exportWeights")
        ),
    )

    image: str = field("Trainer container image (the kubespeed trainer image or one built on it).", min_length=1)
    imagePullPolicy: str = field("When the kubelet pulls the image.", "IfNotPresent", enum=PULL_POLICIES)
    nodes: int = field(
        "Pods in the gang; each pod is one DeepSpeed node. Changing it on a running job (or `kubectl scale lmtj/NAME "
        "--replicas=N`) resizes it: the ranks checkpoint at SIGTERM and a gang of the new size resumes from that "
        "checkpoint with the same global batch (gradient accumulation recomputed), optimizer state and data position; "
        "a size the global batch cannot divide is refused. Within `elastic`'s bounds when they are set.",
        1, minimum=1, maximum=1024)
    procsPerNode: int = field("Ranks per pod; with gpu true, also the GPUs each pod requests.", 1, minimum=1, maximum=64, immutable=True)
    gpu: bool = field("Request `nvidia.com/gpu` per pod and tolerate the GPU taint; false trains on CPU with gloo.", True, immutable=True)
    resources: Resources = field("Per-pod resources besides GPUs.", Resources())
    env: list[EnvVar] = field("Extra environment for the trainer.", [], list_map_keys=("name",))
    serviceAccountName: str | None = field("ServiceAccount of the training pods; its token is never mounted.", None, pattern=DNS_LABEL)
    runtimeClassName: str | None = field(
        "RuntimeClass of the training pods, e.g. `nvidia` on nodes whose default container runtime does not give containers "
        "the GPUs; unset: the operator's default (the chart's trainer.runtimeClassName), else the node's default runtime.",
        None, pattern=DNS_SUBDOMAIN,
    )  # fmt: skip
    program: ProgramSpec | None = field("Run your own program in your own image instead of the built-in trainer (see README, \"Your own program\").", None, immutable=True)
    model: ModelSpec = field(f"The model; {TRAINER_ONLY}", ModelSpec(), immutable=True, crd_default=False)
    data: DataSpec | None = field("The data; required for the built-in trainer, refused with `program`.", None, immutable=True)
    training: TrainingSpec = field(f"The training run; {TRAINER_ONLY}", TrainingSpec(), immutable=True, crd_default=False)
    deepspeed: DeepSpeedSpec = field(f"DeepSpeed engine settings; {TRAINER_ONLY} A program's DeepSpeed config is program.deepspeedConfig.", DeepSpeedSpec(), immutable=True, crd_default=False)
    checkpoint: CheckpointSpec = field("Checkpoints and resume.", CheckpointSpec(), immutable=True)
    elastic: ElasticSpec | None = field(
        "Elastic mode: bounds on `nodes`, and shrinking on lost capacity and growing back (see shrinkAfterSeconds); unset, "
        "`nodes` may change to any size the global batch divides and a lost node is waited for at full size.", None)
    runPolicy: RunPolicy = field("Recovery, deadlines, cleanup and suspension.", RunPolicy())
    scheduling: SchedulingSpec = field("Placement, gang scheduling and queues.", SchedulingSpec())
    podTemplate: PodTemplate = field(
        "What the cluster needs on the training pods (labels, env from Secrets, volumes, sidecars, affinity, "
        "runtimeClassName, capabilities, ...), merged onto the pod the operator builds; applies from the next attempt.",
        PodTemplate(),
    )

    @property
    def world_size(self) -> int:
        return self.nodes * self.procsPerNode

    def trainer_config(self) -> TrainerConfig:
        if self.data is None:
            raise ValueError("a job that runs a program has no trainer config")
        return TrainerConfig(model=self.model, data=self.data, training=self.training, deepspeed=self.deepspeed, checkpoint=self.checkpoint)

    def check(self, path: str = "spec") -> LMTrainingJobSpec:
        """What only Python can judge, after the schema and its rules: a program's DeepSpeed batch sizes, the pod template's training container."""
        if self.program is not None and self.program.deepspeedConfig is not None:
            check_deepspeed_config(self.program.deepspeedConfig, self.world_size, f"{path}.program.deepspeedConfig")
        check_template(self.podTemplate, f"{path}.podTemplate")
        return self