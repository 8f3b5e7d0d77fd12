"""`kubespeed render job.yaml`: print, as a YAML stream, exactly the objects the operator would create.

    kubespeed render manifests/examples/quickstart.yaml
    kubespeed render job.yaml --namespace team-a | kubectl diff -f -
    kubespeed render job.yaml --gpu-runtime-class nvidia --metrics-scraper monitoring:app=prometheus

It needs no cluster and no kopf: `build.render` calls the operator's own
builders. The namespace is the manifest's, else `--namespace`, else `default`.
What the operator knows of its cluster comes from the same flags as the
operator's (the chart sets them from its values), with the same defaults.
"""

from __future__ import annotations

import argparse
import sys

from kubespeed.spec import SpecError, load_job
from kubespeed_operator.build import cluster
from kubespeed_operator.build.render import as_submitted, render, to_yaml


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubespeed render", description=__doc__.splitlines()[0])
    parser.add_argument("job", help="an LMTrainingJob manifest (YAML)")
    parser.add_argument("-n", "--namespace", default="default", help="namespace when the manifest names none")
    cluster.add_flags(parser)
    args = parser.parse_args(argv)
    try:
        job = as_submitted(load_job(args.job), args.namespace)
        objects = render(job, cluster.from_flags(args))
    except SpecError as err:
        where = err.path if err.path.startswith(args.job) else f"{args.job}: {err.path}"
        print(f"kubespeed render: {where}: {err.message}", file=sys.stderr)
        return 1
    sys.stdout.write(to_yaml(objects))
    return 0
