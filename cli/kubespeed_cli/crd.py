"""`kubespeed crd`: print the LMTrainingJob CustomResourceDefinition as YAML (what the chart and manifests carry)."""

from __future__ import annotations

import sys

from kubespeed.spec.crd import crd_yaml


def main(argv: list[str]) -> int:
    if argv:
        print("usage: kubespeed crd   (prints the CRD as YAML)", file=sys.stderr)
        return 2
    sys.stdout.write(crd_yaml())
    return 0
