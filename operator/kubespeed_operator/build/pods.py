"""Training pod `<job>-<rank>` of one attempt: the trainer container and its wiring.

Each pod is one DeepSpeed node. Its env tells the in-pod launcher where node
rank 0 listens (through the headless Service) and how many ranks the gang has;
the files it reads come from the job's ConfigMap. The kubelet never restarts a
training container (restartPolicy Never): the launcher restarts the ranks
inside the pod (runPolicy.maxInPlaceRestarts), and once it gives up, the pod
fails and the operator starts the next attempt with new pods.
"""

from __future__ import annotations

from typing import Any

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec, to_dict
from kubespeed_operator.build.cluster import Cluster
from kubespeed_operator.build.meta import child_metadata, labels
from kubespeed_operator.build.podgroup import gang_annotations, gang_labels
from kubespeed_operator.build.resources import container_resources
from kubespeed_operator.build.program import host_command, host_installer, program_env
from kubespeed_operator.build.template import apply_template
from kubespeed_operator.build.volumes import pod_volumes, volume_mounts, volume_specs

GPU_TOLERATION = {"key": wiring.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

# Tear-down error handling turns a dead or hung peer into a crash of this pod (so
# the gang restarts) rather than a hang; WARN puts NCCL's reason in the pod log.
# Interface choice is left to NCCL, which skips lo and docker* and prefers InfiniBand.
NCCL_ENV = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "NCCL_DEBUG": "WARN",
}


def wiring_env(job_name: str, spec: LMTrainingJobSpec, node_rank: int, attempt: int) -> dict[str, str]:
    """What the in-pod launcher reads; the names come from `kubespeed.wiring`."""
    return {
        wiring.ENV_MASTER_ADDR: wiring.pod_host(job_name, 0),
        wiring.ENV_MASTER_PORT: str(wiring.MASTER_PORT),
        wiring.ENV_NNODES: str(spec.nodes),
        wiring.ENV_NODE_RANK: str(node_rank),
        wiring.ENV_NPROC_PER_NODE: str(spec.procsPerNode),
        wiring.ENV_WORLD_SIZE: str(spec.world_size),
        wiring.ENV_JOB_NAME: job_name,
        wiring.ENV_ATTEMPT: str(attempt),
        wiring.ENV_HOSTFILE: wiring.HOSTFILE_PATH,
        wiring.ENV_TRAINER_CONFIG: wiring.TRAINER_CONFIG_PATH,
        wiring.ENV_DEEPSPEED_CONFIG: wiring.DEEPSPEED_CONFIG_PATH,
        wiring.ENV_CHECKPOINT_DIR: spec.checkpoint.mountPath,
        wiring.ENV_METRICS_PORT: str(wiring.METRICS_PORT),
        wiring.ENV_USE_GPU: "1" if spec.gpu else "0",
        wiring.ENV_TERMINATION_LOG: wiring.TERMINATION_LOG_PATH,
        **recovery_env(spec),
    }


def recovery_env(spec: LMTrainingJobSpec) -> dict[str, str]:
    """runPolicy as the launcher applies it in the pod: in-place restarts, rendezvous wait, step watchdog."""
    policy = spec.runPolicy
    env = {
        wiring.ENV_MAX_RESTARTS: str(policy.maxInPlaceRestarts),
        wiring.ENV_RENDEZVOUS_TIMEOUT: str(policy.startupTimeoutSeconds),
    }
    if policy.progressDeadlineSeconds is not None:
        env[wiring.ENV_STEP_TIMEOUT] = str(policy.progressDeadlineSeconds)
    return env


def container_env(job_name: str, spec: LMTrainingJobSpec, node_rank: int, attempt: int) -> list[dict[str, str]]:
    env = {**(NCCL_ENV if spec.gpu else {}), **wiring_env(job_name, spec, node_rank, attempt)}
    if spec.program is not None:
        del env[wiring.ENV_TRAINER_CONFIG], env[wiring.ENV_DEEPSPEED_CONFIG]
        env.update(program_env(spec))
    # The user's variables come last so they can tune NCCL; the spec refuses
    # names that would rewire the pod (see EnvVar in kubespeed.spec.job).
    env.update({var.name: var.value for var in spec.env})
    return [{"name": k, "value": v} for k, v in env.items()]


# Meets Pod Security `restricted`: non-root, no escalation, no capabilities, RuntimeDefault seccomp.
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": wiring.TRAINER_UID,
    "runAsGroup": wiring.TRAINER_GID,
    # Volumes that support ownership management (checkpoint claims) become writable by the trainer;
    # a claim already owned so is not walked file by file at every pod start.
    "fsGroup": wiring.TRAINER_GID,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def runtime_class(spec: LMTrainingJobSpec, cluster: Cluster) -> str | None:
    """The job's RuntimeClass; the cluster's GPU default only for GPU jobs, whose nodes have that runtime."""
    return spec.runtimeClassName or (cluster.gpu_runtime_class if spec.gpu else None)


def training_pod(job: dict[str, Any], spec: LMTrainingJobSpec, node_rank: int, attempt: int, cluster: Cluster = Cluster()) -> dict[str, Any]:
    job_name = job["metadata"]["name"]
    name = wiring.pod_name(job_name, node_rank)
    metadata = child_metadata(
        job, name, {**labels(job_name, node_rank=node_rank, attempt=attempt), **gang_labels(job_name, spec, attempt)}
    )
    metadata["annotations"] = {"kubectl.kubernetes.io/default-container": wiring.TRAINER_CONTAINER_NAME, **gang_annotations(job_name, spec)}
    volumes = pod_volumes(job_name, spec)
    container = {
        "name": wiring.TRAINER_CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": spec.imagePullPolicy,
        # A program runs in the working directory of its own image.
        **({"command": host_command(spec)} if spec.program else {"command": list(wiring.TRAINER_ENTRYPOINT), "workingDir": wiring.WORK_DIR}),
        "env": container_env(job_name, spec, node_rank, attempt),
        "ports": [
            {"name": "rendezvous", "containerPort": wiring.MASTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": wiring.METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": container_resources(spec),
        "volumeMounts": volume_mounts(volumes),
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        # The launcher writes the failing rank's reason here; a container that dies before it
        # can leaves the end of its log instead. Either way it reaches the job's status.
        "terminationMessagePath": wiring.TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    scheduling = spec.scheduling
    pod_spec: dict[str, Any] = {
        # `<job>-<rank>.<job>` resolves through the headless Service.
        "hostname": name,
        "subdomain": job_name,
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        # Service links would add env for every Service in the namespace; the trainer needs none.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.runPolicy.terminationGracePeriodSeconds,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        **({"initContainers": [host_installer(spec, CONTAINER_SECURITY_CONTEXT)]} if spec.program else {}),
        "containers": [container],
        "volumes": volume_specs(volumes),
    }
    if spec.serviceAccountName:
        pod_spec["serviceAccountName"] = spec.serviceAccountName
    runtime = runtime_class(spec, cluster)
    if runtime:
        pod_spec["runtimeClassName"] = runtime
    if scheduling.nodeSelector:
        pod_spec["nodeSelector"] = dict(scheduling.nodeSelector)
    tolerations = ([dict(GPU_TOLERATION)] if spec.gpu else []) + [to_dict(t) for t in scheduling.tolerations]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if scheduling.affinity:
        pod_spec["affinity"] = scheduling.affinity
    if scheduling.priorityClassName:
        pod_spec["priorityClassName"] = scheduling.priorityClassName
    if scheduling.schedulerName:
        pod_spec["schedulerName"] = scheduling.schedulerName
    return apply_template({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}, spec.podTemplate)
