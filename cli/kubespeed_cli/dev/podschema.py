"""The Kubernetes PodSpec schema of the pinned version, from the API server's own OpenAPI, as a CRD can carry it.

`scripts/generate-pod-schema` starts the pinned control plane, reads `/openapi/v3/api/v1`
and writes `kubespeed/spec/kubernetes_pod_schema.json`, which the spec embeds under
`spec.podTemplate.spec`; tests/integration/test_pod_schema.py checks the file is what
the running API server serves. A CRD's schema must be structural, so:

- references are inlined (`$ref`, and `allOf` of one `$ref` carrying a description);
- `Quantity` and `IntOrString` become `x-kubernetes-int-or-string`, `Time` a date-time string;
- keys a CRD schema does not have (patch strategies, unions, `readOnly`) are left out, and so are
  the defaults a CRD refuses: an object's (`{}` lacks its required fields) and an enum's zero
  value (""); scalar ones stay, since a key of a map-typed list (a port's protocol, TCP) needs
  its default. The API server applies every default to the pod the operator creates anyway;
- `containers` is not required in the template: the operator brings the program's container;
- a list's entries are described by the list's name, as the spec's own lists are;
- `ephemeralContainers` is left out: the API server refuses them on a pod being created.

The result is some 300 kB, so the CRD is applied server-side (`kubectl apply --server-side`):
client-side apply keeps a copy in an annotation, which may hold 256 kB.
"""

from __future__ import annotations

import json
from typing import Any

ROOT = "io.k8s.api.core.v1.PodSpec"
REF_PREFIX = "#/components/schemas/"
INT_OR_STRING = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"x-kubernetes-int-or-string": True},
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"x-kubernetes-int-or-string": True},
}
SCALARS = {"io.k8s.apimachinery.pkg.apis.meta.v1.Time": {"type": "string", "format": "date-time"}}
# The keys of apiextensions.k8s.io/v1 JSONSchemaProps that the schemas of core types use.
KEPT = (
    "description", "type", "format", "items", "properties", "additionalProperties", "required", "enum", "default",
    "minimum", "maximum", "pattern", "maxLength", "minLength", "maxItems", "minItems", "nullable",
    "x-kubernetes-int-or-string", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields",
)  # fmt: skip


def _name(ref: str) -> str:
    if not ref.startswith(REF_PREFIX):
        raise ValueError(f"unexpected reference {ref}")
    return ref[len(REF_PREFIX):]


def structural(schema: dict[str, Any], components: dict[str, Any], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """`schema` with every reference inlined and only the keys a CRD schema has."""
    if "allOf" in schema:
        (only,) = schema["allOf"]
        outer = {k: v for k, v in schema.items() if k != "allOf"}
        return {**structural(only, components, seen), **structural(outer, components, seen)}
    if "$ref" in schema:
        name = _name(schema["$ref"])
        if name in seen:
            raise ValueError(f"{name} refers to itself through {' -> '.join(seen)}; a CRD schema cannot")
        if name in INT_OR_STRING or name in SCALARS:
            return dict(INT_OR_STRING.get(name) or SCALARS[name])
        return structural(components[name], components, (*seen, name))
    result: dict[str, Any] = {}
    for key in KEPT:
        if key not in schema:
            continue
        value = schema[key]
        if key == "properties":
            value = {name: _describe_items(structural(sub, components, seen), name) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = structural(value, components, seen)
        result[key] = value
    if "x-kubernetes-int-or-string" in result:
        result.pop("type", None)
    default = result.get("default")
    if isinstance(default, (dict, list)) or ("enum" in result and default not in result["enum"]):
        result.pop("default", None)
    return result


def _describe_items(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """Kubernetes describes a list, not its entries; `kubectl explain` of an entry then says which list it is in."""
    items = schema.get("items")
    if isinstance(items, dict) and "description" not in items:
        schema["items"] = {"description": f"An entry of {name}.", **items}
    return schema


def pod_spec_schema(openapi: dict[str, Any]) -> dict[str, Any]:
    """The PodSpec of an API server's `/openapi/v3/api/v1` document, structural, containers optional."""
    components = openapi["components"]["schemas"]
    schema = structural(components[ROOT], components, (ROOT,))
    del schema["properties"]["ephemeralContainers"]
    schema["required"] = [name for name in schema.get("required", []) if name != "containers"]
    if not schema["required"]:
        del schema["required"]
    return schema


def fetch_openapi(api_client: Any, server: str) -> dict[str, Any]:
    """The core group's OpenAPI v3 document, read with the client's credentials."""
    response = api_client.rest_client.pool_manager.request("GET", f"{server}/openapi/v3/api/v1")
    if response.status != 200:
        raise RuntimeError(f"GET /openapi/v3/api/v1: HTTP {response.status}")
    return json.loads(response.data)


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"
