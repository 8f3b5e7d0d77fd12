"""The LMTrainingJob CustomResourceDefinition, generated from the spec and status declarations.

`kubespeed crd` prints it; the chart and manifests carry this exact output (a test checks).
"""

from __future__ import annotations

from typing import Any

import yaml

from kubespeed import wiring
from kubespeed.spec.fields import openapi_schema
from kubespeed.spec.job import JOB_NAME_MAX_LENGTH, JOB_NAME_PATTERN, LMTrainingJobSpec
from kubespeed.spec.status import LMTrainingJobStatus

CRD_NAME = f"{wiring.PLURAL}.{wiring.API_GROUP}"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes", "description": "Pods in the running gang."},
    {"name": "Wanted", "type": "integer", "jsonPath": ".spec.nodes", "description": "Pods the spec asks for (spec.nodes)."},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "description": "Optimizer steps done."},
    {"name": "Total", "type": "integer", "jsonPath": ".status.progress.totalSteps", "description": "Steps to train."},
    {"name": "Loss", "type": "string", "jsonPath": ".status.progress.loss", "description": "Latest training loss."},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1, "description": "Gang restarts."},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta", "priority": 1, "description": "Estimated time left."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": "A DeepSpeed language-model training job run by the kubespeed operator.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kubespeed.io/v1alpha1"},
            "kind": {"type": "string", "description": "LMTrainingJob"},
            # The API server allows restricting metadata.name only; the children's names need this.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": JOB_NAME_MAX_LENGTH, "pattern": f"^(?:{JOB_NAME_PATTERN})$"}
                },
            },
            "spec": openapi_schema(LMTrainingJobSpec),
            "status": openapi_schema(LMTrainingJobStatus),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/name": "kubespeed"}},
        "spec": {
            "group": wiring.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": wiring.KIND,
                "listKind": f"{wiring.KIND}List",
                "plural": wiring.PLURAL,
                "singular": wiring.SINGULAR,
                "shortNames": [wiring.SHORT_NAME],
                "categories": ["kubespeed"],
            },
            "versions": [
                {
                    "name": wiring.API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    # `kubectl scale lmtj/NAME --replicas=N` sets spec.nodes, under the spec's rules.
                    "subresources": {
                        "status": {},
                        "scale": {"specReplicasPath": ".spec.nodes", "statusReplicasPath": ".status.nodes", "labelSelectorPath": ".status.selector"},
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    return yaml.safe_dump(crd(), sort_keys=False, width=120)
