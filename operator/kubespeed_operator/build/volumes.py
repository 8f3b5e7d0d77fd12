"""Pod volumes (config, checkpoints, data, shared memory, scratch) and the checkpoint claim.

The trainer container runs with a read-only root filesystem, so every place it
writes is a volume here: checkpoints, /dev/shm, /tmp (caches) and the work dir.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec
from kubespeed_operator.build.meta import child_metadata, labels
from kubespeed_operator.build.resources import shm_size_limit
from kubespeed_operator.build.program import HOST_VOLUME


class Volume(NamedTuple):
    name: str
    source: dict[str, Any]
    mount_path: str
    read_only: bool = False


def checkpoint_claim(job: dict[str, Any], spec: LMTrainingJobSpec) -> dict[str, Any] | None:
    """The PersistentVolumeClaim `<job>-checkpoints`, only when `spec.checkpoint.volumeClaim` asks for it.

    Unless `deleteWithJob`, the claim has no owner reference: checkpoints are the
    job's product, and the garbage collector would otherwise delete them with the
    job, including when ttlSecondsAfterFinished cleans it up.
    """
    template = spec.checkpoint.volumeClaim
    if template is None:
        return None
    name = job["metadata"]["name"]
    claim_spec: dict[str, Any] = {
        "accessModes": [template.accessMode],
        "resources": {"requests": {"storage": template.size}},
    }
    if template.storageClassName is not None:
        claim_spec["storageClassName"] = template.storageClassName
    metadata = child_metadata(job, wiring.checkpoint_claim_name(name), labels(name))
    if not template.deleteWithJob:
        del metadata["ownerReferences"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": claim_spec}


def _checkpoint_source(job_name: str, spec: LMTrainingJobSpec) -> dict[str, Any]:
    if spec.checkpoint.claimName:
        return {"persistentVolumeClaim": {"claimName": spec.checkpoint.claimName}}
    if spec.checkpoint.volumeClaim is not None:
        return {"persistentVolumeClaim": {"claimName": wiring.checkpoint_claim_name(job_name)}}
    # No claim: checkpoints live and die with the pod, so a gang restart starts
    # over (the description of spec.checkpoint.claimName says so).
    return {"emptyDir": {}}


def pod_volumes(job_name: str, spec: LMTrainingJobSpec) -> list[Volume]:
    volumes = [
        Volume("config", {"configMap": {"name": wiring.config_map_name(job_name)}}, wiring.CONFIG_DIR, read_only=True),
        Volume("checkpoints", _checkpoint_source(job_name, spec), spec.checkpoint.mountPath),
    ]
    if spec.data is not None and spec.data.claimName:
        volumes.append(
            Volume("data", {"persistentVolumeClaim": {"claimName": spec.data.claimName, "readOnly": True}}, wiring.DATA_DIR, read_only=True)
        )
    shm: dict[str, Any] = {"medium": "Memory"}
    size = shm_size_limit(spec)
    if size is not None:
        shm["sizeLimit"] = size
    volumes += [
        # NCCL and torch's shared-memory transports need far more than the
        # container runtime's default 64 MiB /dev/shm; memory-backed, it counts
        # against the pod's memory, so its size is bounded by what the pod requests.
        Volume("shm", {"emptyDir": shm}, wiring.SHM_DIR),
        Volume("tmp", {"emptyDir": {}}, wiring.TMP_DIR),
    ]
    if spec.program is None:
        volumes.append(Volume("workspace", {"emptyDir": {}}, wiring.WORK_DIR))
    else:
        # The program host, copied in by the init container (see build/program.py).
        volumes.append(Volume(HOST_VOLUME, {"emptyDir": {}}, wiring.HOST_DIR, read_only=True))
    return volumes


def volume_specs(volumes: list[Volume]) -> list[dict[str, Any]]:
    return [{"name": v.name, **v.source} for v in volumes]


def volume_mounts(volumes: list[Volume]) -> list[dict[str, Any]]:
    return [
        {"name": v.name, "mountPath": v.mount_path, **({"readOnly": True} if v.read_only else {})}
        for v in volumes
    ]
