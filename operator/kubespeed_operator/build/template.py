"""`spec.podTemplate` merged onto a training pod the operator built.

The spec refuses what the wiring owns (kubespeed/spec/podtemplate.py); everything else
the template says is added or wins:
- metadata labels and annotations are added (the operator's own keys stay);
- the container named like the training container adds env and envFrom (after the
  wiring's), volumeMounts, ports; its resources and securityContext merge key by key
  (capabilities: the template's `add`, the operator's `drop`); any other field is the
  template's (probes, lifecycle, workingDir, ...);
- other containers are sidecars; initContainers run after the operator's; volumes and
  tolerations are added; nodeSelector merges; the pod securityContext merges key by key;
- any other PodSpec field is the template's.
"""

from __future__ import annotations

import copy
from typing import Any

from kubespeed import wiring
from kubespeed.spec.podtemplate import PodTemplate

APPENDED = ("env", "envFrom", "volumeMounts", "ports")
MERGED = ("resources", "securityContext")
POD_APPENDED = ("initContainers", "volumes", "tolerations")
POD_MERGED = ("nodeSelector", "securityContext")


def apply_template(pod: dict[str, Any], template: PodTemplate) -> dict[str, Any]:
    """The pod with the template merged in (the pod itself is changed and returned)."""
    meta = pod["metadata"]
    for key in ("labels", "annotations"):
        added = getattr(template.metadata, key)
        if added:
            meta[key] = {**added, **meta.get(key, {})}
    extra = copy.deepcopy(template.spec)
    spec = pod["spec"]
    for container in extra.pop("containers", []):
        if container.get("name") == wiring.TRAINER_CONTAINER_NAME:
            _merge_container(spec["containers"][0], container)
        else:
            spec["containers"].append(container)
    for key in POD_APPENDED:
        if key in extra:
            spec[key] = spec.get(key, []) + extra.pop(key)
    for key in POD_MERGED:
        if key in extra:
            spec[key] = {**spec.get(key, {}), **extra.pop(key)}
    spec.update(extra)
    return pod


def _merge_container(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    for key in APPENDED:
        if key in theirs:
            ours[key] = ours.get(key, []) + theirs.pop(key)
    resources = theirs.pop("resources", None)
    if resources is not None:
        merged = ours.setdefault("resources", {})
        for kind in ("requests", "limits"):
            if kind in resources:
                merged[kind] = {**merged.get(kind, {}), **{name: str(q) for name, q in resources.pop(kind).items()}}
        merged.update(resources)
    security = theirs.pop("securityContext", None)
    if security is not None:
        merged = ours.setdefault("securityContext", {})
        capabilities = security.pop("capabilities", None)
        if capabilities is not None:
            merged["capabilities"] = {**merged.get("capabilities", {}), **capabilities}
        merged.update(security)
    theirs.pop("name")
    ours.update(theirs)
