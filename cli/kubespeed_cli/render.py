"""`kubespeed render job.yaml`: print, as a YAML stream, exactly the objects the operator would create.

    kubespeed render manifests/examples/quickstart.yaml
    kubespeed render job.yaml --namespace team-a | kubectl diff -f -

It needs no cluster and no kopf: `build.render` calls the operator's own
builders. The namespace is the manifest's, else `--namespace`, else `default`.
"""

from __future__ import annotations

import argparse
import sys

from kubespeed.spec import SpecError, load_job
from kubespeed_operator.build.render import as_submitted, render, to_yaml


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
