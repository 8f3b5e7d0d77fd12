"""How a training pod is wired: the one place that names paths, ports, env and exit codes.

The operator writes these into pods, the launcher reads them inside the pod,
`kubespeed local` reproduces them on one machine, and the Dockerfile's trainer
image agrees with them (a test checks). Change a value here and every side moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubespeed import __version__

API_GROUP = "kubespeed.io"
API_VERSION = "v1alpha1"
KIND = "LMTrainingJob"
PLURAL = "lmtrainingjobs"
SINGULAR = "lmtrainingjob"
SHORT_NAME = "lmtj"

# Labels on every child object; the selector of the headless Service and the
# NetworkPolicy use JOB_LABEL, the gang restart uses ATTEMPT_LABEL.
JOB_LABEL = f"{API_GROUP}/job"
NODE_RANK_LABEL = f"{API_GROUP}/node-rank"
ATTEMPT_LABEL = f"{API_GROUP}/attempt"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubespeed"

# The operator's own pods carry NAME_LABEL=APP_NAME and COMPONENT_LABEL=OPERATOR_COMPONENT
# (the chart sets them); a job's NetworkPolicy admits metrics scraping only from them.
# Training pods are COMPONENT_LABEL=TRAINER_COMPONENT.
NAME_LABEL = "app.kubernetes.io/name"
APP_NAME = "kubespeed"
OPERATOR_COMPONENT = "operator"
TRAINER_COMPONENT = "trainer"
# Elastic mode's capacity probes `<job>-probe-<i>` (PROBE_LABEL=i): pods that only wait to be placed, never gang members.
PROBE_LABEL = f"{API_GROUP}/capacity-probe"
PROBE_COMPONENT = "capacity-probe"
# Where the operator runs unless told otherwise (the chart's and the manifests' namespace).
OPERATOR_NAMESPACE = "kubespeed-system"
# The API server labels every namespace with its own name; a NetworkPolicy selects a namespace by it.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# The extended resource a GPU pod requests, and the taint GPU nodes carry under the same key.
GPU_RESOURCE = "nvidia.com/gpu"

# Files the ConfigMap `<job>-config` carries, mounted read-only at CONFIG_DIR.
CONFIG_DIR = "/etc/kubespeed"
HOSTFILE_KEY = "hostfile"
DEEPSPEED_CONFIG_KEY = "deepspeed.json"
TRAINER_CONFIG_KEY = "trainer.yaml"
HOSTFILE_PATH = f"{CONFIG_DIR}/{HOSTFILE_KEY}"
DEEPSPEED_CONFIG_PATH = f"{CONFIG_DIR}/{DEEPSPEED_CONFIG_KEY}"
TRAINER_CONFIG_PATH = f"{CONFIG_DIR}/{TRAINER_CONFIG_KEY}"

# Writable places inside the pod (the trainer image's root filesystem may be read-only).
CHECKPOINT_DIR_DEFAULT = "/checkpoints"
DATA_DIR = "/data"
SHM_DIR = "/dev/shm"
WORK_DIR = "/workspace"
TMP_DIR = "/tmp"
CACHE_DIR = "/tmp/kubespeed-cache"
# The kubelet's file for why a container ended (the pod's terminationMessagePath): the
# launcher writes the failing rank's reason there, and it reaches the pod's status.
TERMINATION_LOG_PATH = "/dev/termination-log"

# The trainer image: where the launcher lives and who runs it.
TRAINER_ENTRYPOINT = ["kubespeed", "launch"]
TRAINER_CONTAINER_NAME = "trainer"
TRAINER_UID = 1000
TRAINER_GID = 1000

# A user's program (spec.program) runs in the user's image under kubespeed's program host
# (kubespeed/program_host.py, standard library only), which an init container from the
# trainer image copies into a volume at HOST_DIR.
HELPER_IMAGE = f"ghcr.io/kubespeed/kubespeed-trainer:{__version__}"
HOST_CONTAINER_NAME = "program-host"
HOST_DIR = "/opt/kubespeed-host"
HOST_SCRIPT = "program_host.py"
HOST_PATH = f"{HOST_DIR}/{HOST_SCRIPT}"
# Where a program's ranks append progress as JSON lines (see README), and the host's own files.
PROGRAM_RUN_DIR = "/tmp/kubespeed"
PROGRESS_FILE = f"{PROGRAM_RUN_DIR}/progress.jsonl"

# Ports: rendezvous (torch.distributed store on node rank 0) and rank 0's metrics.
MASTER_PORT = 29500
METRICS_PORT = 9400
METRICS_PATH = "/metrics"
OPERATOR_METRICS_PORT = 8080
OPERATOR_HEALTH_PORT = 8081

# Environment the operator sets on every training pod.
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"
ENV_NNODES = "NNODES"
ENV_NODE_RANK = "NODE_RANK"
ENV_NPROC_PER_NODE = "NPROC_PER_NODE"
ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_JOB_NAME = "KUBESPEED_JOB"
ENV_ATTEMPT = "KUBESPEED_ATTEMPT"
ENV_HOSTFILE = "KUBESPEED_HOSTFILE"
ENV_TRAINER_CONFIG = "KUBESPEED_TRAINER_CONFIG"
ENV_DEEPSPEED_CONFIG = "KUBESPEED_DEEPSPEED_CONFIG"
ENV_CHECKPOINT_DIR = "KUBESPEED_CHECKPOINT_DIR"
ENV_METRICS_PORT = "KUBESPEED_METRICS_PORT"
ENV_USE_GPU = "KUBESPEED_GPU"
ENV_TERMINATION_LOG = "KUBESPEED_TERMINATION_LOG"
# A user's program: the file its ranks append progress to, and the newest complete
# checkpoint (DeepSpeed's `latest` tag in the checkpoint folder) when one exists.
ENV_PROGRESS_FILE = "KUBESPEED_PROGRESS_FILE"
ENV_LATEST_CHECKPOINT = "KUBESPEED_LATEST_CHECKPOINT"
# Recovery, from runPolicy: in-place restarts per attempt (maxInPlaceRestarts), how long a
# rendezvous waits and, under the watchdog, a rank's start-up may take (startupTimeoutSeconds),
# and each step's watchdog (progressDeadlineSeconds; unset: none). Seconds, as whole numbers.
ENV_MAX_RESTARTS = "KUBESPEED_MAX_RESTARTS"
ENV_RENDEZVOUS_TIMEOUT = "KUBESPEED_RENDEZVOUS_TIMEOUT"
ENV_STEP_TIMEOUT = "KUBESPEED_STEP_TIMEOUT"


@dataclass(frozen=True)
class ExitCode:
    code: int
    retryable: bool
    meaning: str


# Exit codes of `kubespeed launch` and `kubespeed train`. The operator restarts the
# gang only when a retry can help; anything not listed here (a signal, an OOM kill,
# a crash) counts as retryable, since a node or network fault looks the same.
EXIT_SUCCESS = ExitCode(0, False, "training finished")
EXIT_CONFIG_ERROR = ExitCode(64, False, "the job's configuration is invalid; a retry cannot help")
EXIT_DATA_ERROR = ExitCode(65, False, "a data source or tokenizer is missing or unreadable; a retry cannot help")
EXIT_PREEMPTED = ExitCode(143, True, "stopped by SIGTERM after writing a checkpoint; resume from it")
EXIT_RETRYABLE = ExitCode(75, True, "a transient failure (rendezvous, I/O); a retry may help")
# A node without NVIDIA's container runtime (or driver, or device plugin) gives a pod no GPUs;
# another node may, so a restart can help, except when the job has never seen one.
EXIT_NO_GPU = ExitCode(69, True, "the pod sees fewer GPUs than ranks (no NVIDIA runtime, driver or device plugin on the node)")
EXIT_IN_PLACE_FAILED = ExitCode(
    76, True, "the ranks failed and restarting them in place could not bring them back "
    "(runPolicy.maxInPlaceRestarts spent, or a peer gave up the rendezvous); the gang is recreated")
EXIT_CODES = (EXIT_SUCCESS, EXIT_CONFIG_ERROR, EXIT_DATA_ERROR, EXIT_PREEMPTED, EXIT_RETRYABLE, EXIT_NO_GPU, EXIT_IN_PLACE_FAILED)
PERMANENT_EXIT_CODES = frozenset(e.code for e in EXIT_CODES if e.code != 0 and not e.retryable)


def pod_name(job: str, node_rank: int) -> str:
    return f"{job}-{node_rank}"


def probe_name(job: str, index: int) -> str:
    return f"{job}-probe-{index}"


def pod_host(job: str, node_rank: int, namespace: str | None = None) -> str:
    """DNS name of a training pod through the job's headless Service."""
    host = f"{pod_name(job, node_rank)}.{job}"
    return f"{host}.{namespace}.svc" if namespace else host


def config_map_name(job: str) -> str:
    return f"{job}-config"


def checkpoint_claim_name(job: str) -> str:
    return f"{job}-checkpoints"


def hostfile(hosts: list[str], slots: int) -> str:
    """DeepSpeed hostfile: one `<host> slots=<n>` line per node, in node-rank order."""
    return "".join(f"{host} slots={slots}\n" for host in hosts)


def gpu_choice(value: str | None) -> bool | None:
    """ENV_USE_GPU's value as the trainer reads it: "1", "true" or "yes" train on GPUs, any other
    value on the CPU; unset or empty chooses nothing (torch is asked whether it sees a GPU)."""
    value = (value or "").strip().lower()
    return value in ("1", "true", "yes") if value else None
