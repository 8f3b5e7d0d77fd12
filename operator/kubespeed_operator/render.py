"""`kubespeed render job.yaml`: print, as a YAML stream, exactly the objects the operator would create.

    kubespeed render manifests/examples/quickstart.yaml
    kubespeed render job.yaml --namespace team-a | kubectl diff -f -

It needs no cluster and no kopf: it calls the same builders the operator calls
(`children.job_children` and `children.attempt_pods` for attempt 1). A job read
from a file has no uid yet, and the API server assigns one on create; the owner
references carry `RENDER_UID` in its place, the only difference from what the
operator creates. The namespace is the manifest's, else `--namespace`, else
`default`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import yaml

from kubespeed.spec import SpecError, load_job
from kubespeed_operator.children import attempt_pods, job_children

RENDER_UID = "00000000-0000-0000-0000-000000000000"
FIRST_ATTEMPT = 1


def render(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the operator creates for a new job: its children, then the first attempt's pods."""
    return job_children(job) + attempt_pods(job, FIRST_ATTEMPT)


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubespeed render", description=__doc__.splitlines()[0])
    parser.add_argument("job", help="an LMTrainingJob manifest (YAML)")
    parser.add_argument("-n", "--namespace", default="default", help="namespace when the manifest names none")
    args = parser.parse_args(argv)
    try:
        job = as_submitted(load_job(args.job), args.namespace)
        objects = render(job)
    except SpecError as err:
        where = err.path if err.path.startswith(args.job) else f"{args.job}: {err.path}"
        print(f"kubespeed render: {where}: {err.message}", file=sys.stderr)
        return 1
    sys.stdout.write(to_yaml(objects))
    return 0
