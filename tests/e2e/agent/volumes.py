"""A pod's volumes as directories of the agent, and a container's mounts of them.

- configMap / secret: the keys (or `items`) written as files, read-only in the pod.
- emptyDir: a directory of the pod (mode 0777, as the kubelet makes it).
- emptyDir with medium Memory: a directory on the machine's /dev/shm tmpfs, so its pages
  are memory, without a mount on the machine (the size limit is not enforced).
- persistentVolumeClaim: one directory per (namespace, claim) that every pod naming the
  claim shares, across pods and attempts, until the agent stops. The claim must exist
  (bound or not); until it does the pod waits in ContainerCreating with a FailedMount
  event, as on a node whose volume cannot be attached.
- downwardAPI: fieldRef items written as files.
Other volume types fail the mount with a message that names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .env import Lookup, field_value


class MountPending(Exception):
    """A volume cannot be set up yet (or ever); the message is the FailedMount event's."""


@dataclass(frozen=True)
class Volume:
    path: Path
    read_only: bool


def _write_keys(directory: Path, data: dict[str, str], items: list[dict[str, Any]] | None, mode: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    chosen = [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else [(k, k, mode) for k in data]
    for key, relative, file_mode in chosen:
        if key not in data:
            raise MountPending(f"key {key!r} is not in the volume source")
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[key])
        target.chmod(file_mode)


def claim_dir(claims_root: Path, namespace: str, claim: str) -> Path:
    return claims_root / namespace / claim


def prepare(
    pod: dict[str, Any],
    pod_dir: Path,
    shm_dir: Path,
    claims_root: Path,
    config_map: Lookup,
    secret: Lookup,
    claim_exists: Callable[[str, str], bool],
) -> dict[str, Volume]:
    namespace = pod["metadata"]["namespace"]
    volumes: dict[str, Volume] = {}
    for spec in pod["spec"].get("volumes") or []:
        name = spec["name"]
        if "emptyDir" in spec:
            memory = (spec["emptyDir"] or {}).get("medium") == "Memory"
            path = (shm_dir if memory else pod_dir / "volumes") / name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)
            volumes[name] = Volume(path, False)
        elif "configMap" in spec or "secret" in spec:
            kind = "configMap" if "configMap" in spec else "secret"
            source = spec[kind]
            object_name = source["name"] if kind == "configMap" else source["secretName"]
            lookup = config_map if kind == "configMap" else secret
            try:
                data = lookup(namespace, object_name)
            except KeyError:
                if not source.get("optional"):
                    raise MountPending(f'{kind} "{object_name}" not found') from None
                data = {}
            path = pod_dir / "volumes" / name
            _write_keys(path, data, source.get("items"), source.get("defaultMode", 0o644))
            volumes[name] = Volume(path, True)
        elif "persistentVolumeClaim" in spec:
            claim = spec["persistentVolumeClaim"]["claimName"]
            if not claim_exists(namespace, claim):
                raise MountPending(f'persistentvolumeclaim "{claim}" not found')
            path = claim_dir(claims_root, namespace, claim)
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)
            volumes[name] = Volume(path, bool(spec["persistentVolumeClaim"].get("readOnly")))
        elif "downwardAPI" in spec:
            items = spec["downwardAPI"].get("items") or []
            data = {i["path"]: field_value(pod, i["fieldRef"]["fieldPath"], "", "") for i in items if "fieldRef" in i}
            path = pod_dir / "volumes" / name
            _write_keys(path, data, None, spec["downwardAPI"].get("defaultMode", 0o644))
            volumes[name] = Volume(path, True)
        else:
            kinds = sorted(set(spec) - {"name"})
            raise MountPending(f"volume {name!r} of type {', '.join(kinds)} is not supported by the test node agent")
    return volumes


def container_mounts(container: dict[str, Any], volumes: dict[str, Volume]) -> list[dict[str, Any]]:
    """podinit's mount list: each volumeMount (with subPath) as a bind of the volume's directory."""
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise MountPending(f"volumeMount {mount['name']!r} names no volume of the pod")
        source = volume.path
        if mount.get("subPath"):
            source = volume.path / mount["subPath"]
            if not source.exists():
                source.mkdir(parents=True)
                source.chmod(0o777)
        mounts.append({"kind": "bind", "source": str(source), "target": mount["mountPath"],
                       "readOnly": volume.read_only or bool(mount.get("readOnly"))})  # fmt: skip
    return mounts

