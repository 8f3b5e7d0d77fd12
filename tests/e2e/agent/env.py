"""A container's environment and command line, resolved the way the kubelet resolves them.

Downward API fields (fieldRef, resourceFieldRef), configMap and secret keys, `envFrom`
with its prefix, and `$(VAR)` references in values, command and args (`$$` escapes).
Service-link variables (`<SVC>_SERVICE_HOST`) are not set: training pods turn them off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

# Reads a ConfigMap's or Secret's data: (namespace, name) -> {key: value}; KeyError if it is missing.
Lookup = Callable[[str, str], dict[str, str]]

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_LABEL_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class EnvError(Exception):
    """A variable cannot be resolved; the kubelet reports CreateContainerConfigError."""


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, undefined ones kept, `$$` -> `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, value)


def field_value(pod: dict[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    metadata, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": metadata["name"],
        "metadata.namespace": metadata["namespace"],
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
    }
    if path in simple:
        return simple[path]
    match = _LABEL_FIELD.match(path)
    if match:
        return (metadata.get(match.group(1)) or {}).get(match.group(2), "")
    raise EnvError(f"unsupported fieldRef {path!r}")


def _quantity(text: str) -> float:
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def resource_value(container: dict[str, Any], ref: dict[str, Any], node_allocatable: dict[str, str]) -> str:
    """limits.cpu / requests.memory ...; an unset limit reads as the node's allocatable, as in the kubelet."""
    kind, _, resource = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(resource)
    if raw is None and kind == "requests":
        raw = (resources.get("limits") or {}).get(resource)
    if raw is None:
        raw = node_allocatable.get(resource, "0")
    divisor = _quantity(str(ref.get("divisor") or "1"))
    return str(math.ceil(_quantity(str(raw)) / divisor))


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    base: dict[str, str],
    pod_ip: str,
    host_ip: str,
    config_map: Lookup,
    secret: Lookup,
    node_allocatable: dict[str, str],
) -> dict[str, str]:
    """`base` (the image's variables) overlaid with envFrom, then env, in order."""
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, lookup in (("configMapRef", config_map), ("secretRef", secret)):
            ref = source.get(kind)
            if ref is None:
                continue
            try:
                values = lookup(namespace, ref["name"])
            except KeyError as error:
                if ref.get("optional"):
                    continue
                raise EnvError(f"{kind} {ref['name']!r} not found") from error
            env.update({prefix + key: value for key, value in values.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value") or "", env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"], node_allocatable)
        else:
            kind, lookup = ("configMapKeyRef", config_map) if "configMapKeyRef" in source else ("secretKeyRef", secret)
            ref = source[kind]
            try:
                env[name] = lookup(namespace, ref["name"])[ref["key"]]
            except KeyError as error:
                if ref.get("optional"):
                    continue
                raise EnvError(f"{kind} {ref['name']}/{ref['key']} not found") from error
    return env


def command_line(container: dict[str, Any], entrypoint: list[str], cmd: list[str], env: dict[str, str]) -> list[str]:
    """command replaces the image's ENTRYPOINT (and drops its CMD); args replace CMD."""
    if container.get("command"):
        argv = list(container["command"]) + list(container.get("args") or [])
    else:
        argv = list(entrypoint) + list(container["args"] if container.get("args") is not None else cmd)
    return [expand(arg, env) for arg in argv]
