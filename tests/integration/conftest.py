"""Integration fixtures on top of the control plane (tests/conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from kubespeed_cli.dev.cluster import ControlPlane

WIDGET_GROUP, WIDGET_VERSION, WIDGET_PLURAL = "test.kubespeed.io", "v1", "widgets"

# A small CRD with the kinds of rules a real one has: a required field, a type, a bound, an enum.
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{WIDGET_PLURAL}.{WIDGET_GROUP}"},
    "spec": {
        "group": WIDGET_GROUP,
        "names": {"kind": "Widget", "plural": WIDGET_PLURAL, "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": WIDGET_VERSION,
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["replicas"],
                                "properties": {
                                    "replicas": {"type": "integer", "minimum": 1},
                                    "size": {"type": "string", "enum": ["small", "large"]},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


CreateWidget = Callable[[str, dict[str, Any]], dict[str, Any]]


@pytest.fixture(scope="session")
def create_widget(control_plane: ControlPlane) -> CreateWidget:
    """Installs the Widget CRD once, waits until the apiserver serves it (Established), and
    returns `create_widget(namespace, spec)`, which creates a Widget named `widget`."""
    from kubernetes import client

    api = control_plane.api_client()
    extensions = client.ApiextensionsV1Api(api)
    extensions.create_custom_resource_definition(WIDGET_CRD)
    name = WIDGET_CRD["metadata"]["name"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"CRD {name} was not Established within 60s")
    custom = client.CustomObjectsApi(api)

    def create(namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
        widget = {"apiVersion": f"{WIDGET_GROUP}/{WIDGET_VERSION}", "kind": "Widget", "metadata": {"name": "widget"},
                  "spec": spec}  # fmt: skip
        return custom.create_namespaced_custom_object(WIDGET_GROUP, WIDGET_VERSION, namespace, WIDGET_PLURAL, widget)

    return create


# The operator under the shipped RBAC, the fake kubelet and job helpers (also used by tests/e2e).
from operator_fixture import kubelet, lmtj, operator, operator_setup  # noqa: E402,F401
