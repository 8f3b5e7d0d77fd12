"""`kubespeed local job.yaml`: run an LMTrainingJob on this machine, each pod a local process group.

    kubespeed local manifests/examples/quickstart.yaml
    kubespeed local manifests/examples/quickstart.yaml --set training.steps=50 --no-progress
    kubespeed local manifests/examples/quickstart.yaml --fresh      # forget the last run, start over

The pods are the operator's own (`kubespeed_operator.build.children`); `rewire` says what
differs off-cluster, `runner` runs the gang, `progress`, `summary` and `plot` report.
"""

from kubespeed_cli.local.command import main

__all__ = ["main"]
