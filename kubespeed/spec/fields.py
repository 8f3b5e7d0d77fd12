"""Declare spec fields once: their type, default, description and bounds.

A spec section is a dataclass whose fields are made with `field(...)`. From that
one declaration come the OpenAPI schema of the CRD (`openapi_schema`), the parse
of a plain dict with errors that name the field (`from_dict`), and the defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from kubespeed.spec import rules
from kubespeed.spec.errors import SpecError
from kubespeed.spec.quantity import PATTERN as QUANTITY_PATTERN

MISSING = dataclasses.MISSING


QUANTITY_MAX_LENGTH = 64


class Quantity(str):
    """Type of a field holding a resource quantity (`8`, `500m`, `64Gi`: an integer, or a string the
    API server's schema for resource.Quantity accepts); parsed values stay the int or str the user wrote."""


def field(
    description: str,
    default: Any = MISSING,
    *,
    enum: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    pattern: str | None = None,
    min_length: int | None = None,
    max_properties: int | None = None,
    immutable: bool = False,
    preserve_unknown: bool = False,
    embedded_resource: bool = False,
    int_or_string: bool = False,
    list_map_keys: tuple[str, ...] | None = None,
    crd_default: bool = True,
    schema: Callable[[], dict[str, Any]] | None = None,
) -> Any:
    """A spec field. A mutable default (list, dict, dataclass) is copied per instance.

    `crd_default=False`: the CRD lists no default, so a field the user left out stays
    absent in the stored object and a CEL rule can tell (`has()`); the parser still
    fills the default, and leaves the field out of what the rules see, as the API
    server does.

    `schema`: the field's OpenAPI schema comes from elsewhere (Kubernetes' own types, see
    spec.podtemplate); the API server validates it, the parser takes the value as it is.
    """
    meta = {
        "description": description,
        "enum": enum,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "pattern": pattern,
        "min_length": min_length,
        "max_properties": max_properties,
        "immutable": immutable,
        "preserve_unknown": preserve_unknown,
        "embedded_resource": embedded_resource,
        "int_or_string": int_or_string,
        "list_map_keys": list_map_keys,
        "crd_default": crd_default,
        "schema": schema,
    }
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value)
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Resolving string annotations is most of a parse's cost, and the operator parses
    # a spec several times per reconcile; classes do not change at run time.
    return typing.get_type_hints(cls)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


# ---------------------------------------------------------------- OpenAPI schema

def _type_schema(tp: Any, meta: dict[str, Any]) -> dict[str, Any]:
    if meta.get("schema") is not None:
        return copy.deepcopy(meta["schema"]())
    if meta.get("int_or_string"):
        return {"x-kubernetes-int-or-string": True}
    if dataclasses.is_dataclass(tp):
        return openapi_schema(tp)
    if tp is Quantity:
        # A length bound keeps the API server's cost estimate for CEL rules on quantities within budget.
        return {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN, "maxLength": QUANTITY_MAX_LENGTH}
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": _type_schema(item, {})}
    if origin is dict:
        _, value = typing.get_args(tp)
        if value is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": _type_schema(value, {})}
    if tp is Any:
        return {"x-kubernetes-preserve-unknown-fields": True}
    return {
        bool: {"type": "boolean"},
        int: {"type": "integer"},
        float: {"type": "number"},
        str: {"type": "string"},
    }[tp]


def _json_default(value: Any) -> Any:
    """A default as the CRD lists it: fields declared with crd_default=False left out."""
    if dataclasses.is_dataclass(value):
        return {
            f.name: _json_default(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None and f.metadata.get("crd_default", True)
        }
    return to_dict(value)


def field_schema(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    meta = f.metadata
    inner, optional = _unwrap_optional(tp)
    schema = _type_schema(inner, meta)
    if meta.get("preserve_unknown"):
        schema["x-kubernetes-preserve-unknown-fields"] = True
    if meta.get("embedded_resource"):
        schema["x-kubernetes-embedded-resource"] = True
    description = meta["description"]
    default = _default_of(f)
    if not meta.get("crd_default", True) and not dataclasses.is_dataclass(default):
        description += f" Default: {json.dumps(default)}."
    # Ours over a description that came with a schema from elsewhere (the PodSpec's own says nothing of merging).
    schema = {"description": description, **{k: v for k, v in schema.items() if k != "description"}}
    if "items" in schema and "description" not in schema["items"]:
        schema["items"] = {"description": f"An entry of {f.name}.", **schema["items"]}
    if default is not MISSING and default is not None and not optional and meta.get("crd_default", True):
        # An empty object default is left to the nested defaults, which the API
        # server applies once the object exists; listing it here keeps them applied
        # when the user leaves the whole section out.
        schema["default"] = _json_default(default)
    if meta.get("enum") is not None:
        schema["enum"] = list(meta["enum"])
    if meta.get("minimum") is not None:
        schema["minimum"] = meta["minimum"]
        if meta.get("exclusive_minimum"):
            schema["exclusiveMinimum"] = True
    if meta.get("maximum") is not None:
        schema["maximum"] = meta["maximum"]
    if meta.get("pattern") is not None:
        # OpenAPI patterns match anywhere in the value; anchored, the API server
        # checks the whole value, as the parser does.
        schema["pattern"] = f"^(?:{meta['pattern']})$"
    if meta.get("min_length") is not None:
        schema["minItems" if schema.get("type") == "array" else "minLength"] = meta["min_length"]
    if meta.get("max_properties") is not None:
        # A bound on a map keeps the cost the API server estimates for its CEL rules within budget.
        schema["maxProperties"] = meta["max_properties"]
    if meta.get("list_map_keys"):
        # The API server refuses two entries with the same keys (e.g. two env vars of one name).
        schema["x-kubernetes-list-type"] = "map"
        schema["x-kubernetes-list-map-keys"] = list(meta["list_map_keys"])
    if meta.get("immutable"):
        schema.setdefault("x-kubernetes-validations", []).append(
            {"rule": "self == oldSelf", "message": f"{f.name} cannot change once the job exists"}
        )
    return schema


def openapi_schema(cls: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a spec dataclass, with CEL rules from `__cel__`."""
    hints = _hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        properties[f.name] = field_schema(f, hints[f.name])
        if _default_of(f) is MISSING:
            required.append(f.name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if cls.__doc__:
        schema = {"description": " ".join(cls.__doc__.split()), **schema}
    if required:
        schema["required"] = required
    rules = getattr(cls, "__cel__", ())
    if rules:
        schema["x-kubernetes-validations"] = [dict(r) for r in rules]
    return schema


# ---------------------------------------------------------------- parsing

def _parse(tp: Any, value: Any, path: str, meta: dict[str, Any]) -> tuple[Any, Any]:
    """(the value parsed, the same as plain data): the plain form is built once, on the way up,
    for the CEL rules of every section above it."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None, None
        raise SpecError(path, "must be set (got null)")
    if meta.get("schema") is not None:
        check_schema(value, meta["schema"](), path)
        return value, value
    if meta.get("int_or_string") or inner is Quantity:
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise SpecError(path, f"must be an integer or a string, got {value!r}")
        if inner is Quantity and isinstance(value, str):
            if not re.fullmatch(QUANTITY_PATTERN, value) or len(value) > QUANTITY_MAX_LENGTH:
                raise SpecError(path, f"must be a quantity such as 8, 500m or 64Gi; got {value!r}")
        return value, value
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            raise SpecError(path, f"must be an object, got {type(value).__name__}")
        return _from_dict(inner, value, path)
    origin = typing.get_origin(inner)
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(path, f"must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(inner)
        pairs = [_parse(item, v, f"{path}[{i}]", {}) for i, v in enumerate(value)]
        return [parsed for parsed, _ in pairs], [plain for _, plain in pairs]
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(path, f"must be an object, got {type(value).__name__}")
        _, vt = typing.get_args(inner)
        pairs = {k: _parse(vt, v, f"{path}.{k}", {}) for k, v in value.items()}
        return {k: parsed for k, (parsed, _) in pairs.items()}, {k: plain for k, (_, plain) in pairs.items()}
    if inner is Any:
        return value, value
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value), float(value)
    if inner is int and isinstance(value, float) and value.is_integer():
        return int(value), int(value)
    if not isinstance(value, inner) or (inner is not bool and isinstance(value, bool)):
        raise SpecError(path, f"must be {_type_word(inner)}, got {value!r}")
    return value, value


_SCHEMA_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}


def check_schema(value: Any, schema: dict[str, Any], path: str) -> None:
    """What the API server checks of a value under a structural schema: types, required fields, enums,
    unknown fields (refused, as strict field validation does); the pattern and format checks are its alone."""
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SpecError(path, f"must be an integer or a string, got {value!r}")
        return
    kind = schema.get("type")
    if kind is not None:
        wanted = _SCHEMA_TYPES[kind]
        if not isinstance(value, wanted) or (kind in ("integer", "number") and isinstance(value, bool)):
            raise SpecError(path, f"must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise SpecError(path, f"must be one of {', '.join(map(str, schema['enum']))}; got {value!r}")
    if isinstance(value, dict):
        properties = schema.get("properties")
        for name in schema.get("required", []):
            if name not in value:
                raise SpecError(f"{path}.{name}", "is required")
        for name, item in value.items():
            if properties is not None:
                if name not in properties:
                    raise SpecError(f"{path}.{name}", f"unknown field (known: {', '.join(sorted(properties))})")
                check_schema(item, properties[name], f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                check_schema(item, schema["additionalProperties"], f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check_schema(item, schema["items"], f"{path}[{index}]")


def _type_word(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _check_bounds(value: Any, meta: dict[str, Any], path: str) -> None:
    if value is None:
        return
    enum = meta.get("enum")
    if enum is not None and value not in enum:
        raise SpecError(path, f"must be one of {', '.join(map(str, enum))}; got {value!r}")
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None and (value < lo or (meta.get("exclusive_minimum") and value == lo)):
        word = "greater than" if meta.get("exclusive_minimum") else "at least"
        raise SpecError(path, f"must be {word} {lo}; got {value!r}")
    if hi is not None and value > hi:
        raise SpecError(path, f"must be at most {hi}; got {value!r}")
    if meta.get("min_length") is not None and len(value) < meta["min_length"]:
        raise SpecError(path, "must not be empty")
    if meta.get("max_properties") is not None and len(value) > meta["max_properties"]:
        raise SpecError(path, f"must have at most {meta['max_properties']} entries")
    if meta.get("pattern") is not None:
        if not re.fullmatch(meta["pattern"], value):
            raise SpecError(path, f"must match {meta['pattern']}; got {value!r}")
    keys = meta.get("list_map_keys")
    if keys:
        seen: set[tuple[Any, ...]] = set()
        for i, item in enumerate(value):
            key = tuple(getattr(item, k) for k in keys)
            if key in seen:
                raise SpecError(f"{path}[{i}]", f"duplicate entry with {', '.join(keys)} {', '.join(map(str, key))}")
            seen.add(key)


def from_dict(cls: type, data: dict[str, Any] | None, path: str = "spec") -> Any:
    """Parse a plain dict into the dataclass `cls`, filling defaults; errors name the field."""
    return _from_dict(cls, data, path)[0]


def _from_dict(cls: type, data: dict[str, Any] | None, path: str) -> tuple[Any, dict[str, Any]]:
    data = dict(data or {})
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(names))})")
    values: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        sub = f"{path}.{f.name}"
        if f.name in data:
            value, plain_value = _parse(hints[f.name], data[f.name], sub, f.metadata)
        else:
            value = _default_of(f)
            if value is MISSING:
                raise SpecError(sub, "is required")
            plain_value = _json_default(value) if f.metadata.get("crd_default", True) else None
        _check_bounds(value, f.metadata, sub)
        values[f.name] = value
        if plain_value is not None:
            plain[f.name] = plain_value
    obj = cls(**values)
    rules.check(cls, plain, path)
    return obj, plain


def to_dict(obj: Any) -> Any:
    """The dataclass as plain JSON-ready data (camelCase keys as declared), Nones dropped."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
