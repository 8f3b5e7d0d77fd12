"""Training pod `<job>-<rank>` of one attempt: the trainer container and its wiring.

Each pod is one DeepSpeed node. Its env tells the in-pod launcher where node
rank 0 listens (through the headless Service) and how many ranks the gang has;
the files it reads come from the job's ConfigMap. The kubelet never restarts a
training container (restartPolicy Never): a failure fails the gang, and the
operator starts the next attempt with new pods.
"""

from __future__ import annotations

from typing import Any

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec, to_dict
from kubespeed_operator.build.meta import child_metadata, labels
from kubespeed_operator.build.podgroup import gang_annotations, gang_labels
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
    }


def container_env(job_name: str, spec: LMTrainingJobSpec, node_rank: int, attempt: int) -> list[dict[str, str]]:
    env = {**(NCCL_ENV if spec.gpu else {}), **wiring_env(job_name, spec, node_rank, attempt)}
    # The user's variables come last so they can tune NCCL; the spec refuses
    # names that would rewire the pod (see EnvVar in kubespeed.spec.job).
    env.update({var.name: var.value for var in spec.env})
    return [{"name": k, "value": v} for k, v in env.items()]


def container_resources(spec: LMTrainingJobSpec) -> dict[str, Any]:
    """Quantities as strings, the form the API server returns and typed clients expect."""
    requests = {name: str(q) for name, q in spec.resources.requests.items()}
    limits = {name: str(q) for name, q in spec.resources.limits.items()}
    if spec.gpu:
        # An extended resource's request defaults to its limit.
        limits[wiring.GPU_RESOURCE] = str(spec.procsPerNode)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


# Meets Pod Security `restricted`: non-root, no escalation, no capabilities, RuntimeDefault seccomp.
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": wiring.TRAINER_UID,
    "runAsGroup": wiring.TRAINER_GID,
    # Volumes that support ownership management (checkpoint claims) become writable by the trainer.
    "fsGroup": wiring.TRAINER_GID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def training_pod(job: dict[str, Any], spec: LMTrainingJobSpec, node_rank: int, attempt: int) -> dict[str, Any]:
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
        "command": list(wiring.TRAINER_ENTRYPOINT),
        "workingDir": wiring.WORK_DIR,
        "env": container_env(job_name, spec, node_rank, attempt),
        "ports": [
            {"name": "rendezvous", "containerPort": wiring.MASTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": wiring.METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": container_resources(spec),
        "volumeMounts": volume_mounts(volumes),
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
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
        "containers": [container],
        "volumes": volume_specs(volumes),
    }
    if spec.serviceAccountName:
        pod_spec["serviceAccountName"] = spec.serviceAccountName
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
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
