"""What `kubespeed render` prints: every object the operator creates for a new job, as a YAML stream.

It calls the same builders the operator calls (`children.job_children` and
`children.attempt_pods` for attempt 1). A job read from a file has no uid yet,
and the API server assigns one on create; the owner references carry
`RENDER_UID` in its place, the only difference from what the operator creates.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubespeed_operator.build.children import Cluster, attempt_pods, job_children

RENDER_UID = "00000000-0000-0000-0000-000000000000"
FIRST_ATTEMPT = 1


def render(job: dict[str, Any], cluster: Cluster = Cluster()) -> list[dict[str, Any]]:
    """Every object the operator creates for a new job: its children, then the first attempt's pods."""
    return job_children(job, cluster=cluster) + attempt_pods(job, FIRST_ATTEMPT, cluster=cluster)


def as_submitted(job: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The job as the operator would see it, with the placeholder uid and the namespace filled in."""
    job = copy.deepcopy(job)
    meta = job.setdefault("metadata", {})
    meta.setdefault("namespace", namespace)
    meta.setdefault("uid", RENDER_UID)
    return job


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the ConfigMap's files) as literal blocks, so they read as files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=120)
