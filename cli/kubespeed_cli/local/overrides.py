"""`--set key=value`: change one field of a job's spec from the command line.

Keys are dotted paths inside `spec` (`training.steps=20`); values are read as YAML,
so `20` is a number, `true` a boolean and `{a: 1}` an object. The parse of the
whole spec afterwards checks the result, so a wrong key or value is refused with
the same message a wrong manifest gets.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubespeed.spec import SpecError


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], parsed value)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise SpecError(f"--set {text}", "expected key=value with a dotted key inside spec, e.g. training.steps=20")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise SpecError(f"--set {text}", f"value is not valid YAML: {err}") from err
    return parts, value


def apply_overrides(job: dict, overrides: list[str]) -> dict:
    """A copy of the job manifest with each `key=value` set inside its spec, in order."""
    job = copy.deepcopy(job)
    for text in overrides:
        parts, value = parse_override(text)
        node = job.setdefault("spec", {})
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(["spec", *parts[: depth + 1]])
                raise SpecError(f"--set {text}", f"{where} is {child!r}, not an object")
            node = child
        node[parts[-1]] = value
    return job
