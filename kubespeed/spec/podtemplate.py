"""`spec.podTemplate`: what a cluster needs on the training pods, merged onto the pod the operator builds.

Its `spec` is Kubernetes' own PodSpec schema of the pinned version, generated from the
API server's OpenAPI (scripts/generate-pod-schema writes kubernetes_pod_schema.json), so
`kubectl explain` teaches it and the API server refuses a bad value at apply. What the
wiring owns is refused by the rules below, naming the field; how the rest is merged is
the operator's (kubespeed_operator/build/template.py, described in README). The rules the
API server can afford are CEL; the rest (`check_template`) the parser applies, so the
operator refuses such a job with a condition and an Event, and render and local refuse it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubespeed import wiring
from kubespeed.spec.errors import SpecError
from kubespeed.spec.fields import field
from kubespeed.spec.rules import rule

SCHEMA_FILE = Path(__file__).with_name("kubernetes_pod_schema.json")

# Pod fields the operator sets from the wiring or from a field of the job's own.
OWNED_POD_FIELDS = {
    "hostname": "the pod's name, which the hostfile and MASTER_ADDR use",
    "subdomain": "the job's headless Service",
    "restartPolicy": "Never: the launcher restarts ranks, the operator the gang",
    "terminationGracePeriodSeconds": "set by runPolicy.terminationGracePeriodSeconds",
    "automountServiceAccountToken": "training pods get no API credentials",
}
# The program container's fields that are the wiring's.
OWNED_CONTAINER_FIELDS = ("image", "command", "args")
# Volumes the operator mounts; a template volume of the same name would replace one.
OWNED_VOLUMES = ("config", "checkpoints", "data", "shm", "tmp", "workspace", "program-host")
# Env the pod wiring sets; neither spec.env nor the template may replace it.
RESERVED_ENV = tuple(sorted(value for name, value in vars(wiring).items() if name.startswith("ENV_")))


@functools.cache
def pod_spec_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def check_template(template: PodTemplate, path: str) -> None:
    """What the API server cannot afford to check (a CEL rule over every volume, or every env entry of
    every container, exceeds its cost budget): the operator's volume names, and the training
    container's image, command, args and wiring env."""
    for index, volume in enumerate(template.spec.get("volumes") or []):
        if volume.get("name") in OWNED_VOLUMES:
            raise SpecError(f"{path}.spec.volumes[{index}].name", f"volume names {', '.join(OWNED_VOLUMES)} are the operator's")
    for index, container in enumerate(template.spec.get("containers") or []):
        if container.get("name") != TRAINER:
            continue
        where = f"{path}.spec.containers[{index}]"
        for name in OWNED_CONTAINER_FIELDS:
            if name in container:
                raise SpecError(f"{where}.{name}", f"the {TRAINER} container's {name} is the job's (spec.image, spec.program)")
        for position, variable in enumerate(container.get("env") or []):
            if variable.get("name") in RESERVED_ENV:
                raise SpecError(f"{where}.env[{position}].name", "is set by kubespeed's pod wiring and cannot be overridden")


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


TRAINER = wiring.TRAINER_CONTAINER_NAME


@dataclass(kw_only=True)
class PodTemplateMetadata:
    """Labels and annotations added to every training pod."""

    labels: dict[str, str] = field("Labels for every training pod; keys under kubespeed.io/ are the operator's.", {})
    annotations: dict[str, str] = field("Annotations for every training pod; keys under kubespeed.io/ are the operator's.", {})

    __cel__ = (
        rule(f"self.labels.all(k, !k.startsWith('{wiring.API_GROUP}/'))", f"labels under {wiring.API_GROUP}/ are set by the operator", ".labels"),
        rule(f"self.annotations.all(k, !k.startsWith('{wiring.API_GROUP}/'))", f"annotations under {wiring.API_GROUP}/ are set by the operator", ".annotations"),
    )


@dataclass(kw_only=True)
class PodTemplate:
    """Merged onto every training pod: metadata, and a Kubernetes PodSpec whose fields are added to the operator's."""

    metadata: PodTemplateMetadata = field("Labels and annotations for the pods.", PodTemplateMetadata())
    spec: dict[str, Any] = field(
        f"A Kubernetes PodSpec merged onto the operator's pod: a container named `{TRAINER}` adds to the training "
        "container (env, envFrom, volumeMounts, ports, resources, securityContext, probes; its image, command and args "
        "are the job's), other containers are sidecars, initContainers run after the operator's, volumes and tolerations "
        "are added, nodeSelector merges, and any other field (affinity, topologySpreadConstraints, runtimeClassName, "
        "priorityClassName, imagePullSecrets, serviceAccountName, securityContext, dnsConfig, ...) is the template's. "
        f"Refused: {', '.join(OWNED_POD_FIELDS)}, the volumes {', '.join(OWNED_VOLUMES)}, and env the wiring sets.",
        {}, schema=pod_spec_schema,
    )

    __cel__ = (
        *(rule(f"!has(self.spec.{name})", f"spec.{name} is the operator's: {why}", f".spec.{name}") for name, why in OWNED_POD_FIELDS.items()),
    )
