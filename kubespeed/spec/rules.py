"""The CRD's CEL validation rules, evaluated here too: one rule, one message, wherever a spec is read.

A spec class declares its rules once, in `__cel__` (see `job.rule`). The CRD carries
them as `x-kubernetes-validations`, which the API server evaluates at apply time;
`from_dict` evaluates the same expressions on the parsed and defaulted section (as
the API server sees it after defaulting) with a CEL implementation
(common-expression-language), so `kubespeed local`, the trainer and the operator
refuse what the API server refuses, with its message, naming the same field.

Transition rules (they read `oldSelf`) only mean something when an object changes;
the API server alone evaluates them.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from kubespeed.spec import quantity
from kubespeed.spec.errors import SpecError


def _load_evaluator() -> ModuleType:
    """common-expression-language's evaluator: its compiled extension module, by itself.

    The package's `__init__` also imports its interactive REPL (typer, prompt_toolkit,
    pygments, rich): 0.2 s and 26 MB in every process that parses a spec (the operator,
    each training rank). Loaded alone, the extension costs 10 ms and 3 MB.
    """
    package = importlib.util.find_spec("cel")
    if package is None or not package.submodule_search_locations:
        raise ImportError("common-expression-language is not installed (see pyproject.toml)")
    (library,) = Path(next(iter(package.submodule_search_locations))).glob("cel.*.so")
    loader = importlib.machinery.ExtensionFileLoader("cel.cel", str(library))
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("cel.cel", library, loader=loader))
    loader.exec_module(module)
    return module


cel = _load_evaluator()


@functools.cache
def _programs(cls: type) -> tuple[tuple[dict[str, str], Any], ...]:
    rules = getattr(cls, "__cel__", ())
    return tuple((rule, cel.compile(rule["rule"])) for rule in rules if "oldSelf" not in rule["rule"])


def rule(expression: str, message: str, field_path: str) -> dict[str, str]:
    """A CEL validation rule of the CRD; `field_path` (relative to the object) names the field in the error."""
    return {"rule": expression, "message": message, "fieldPath": field_path, "reason": "FieldValueInvalid"}


def _substring(value: str, start: int, end: int | None = None) -> str:
    """cel-go's strings extension, which the API server's CEL has: indices within the string or an error."""
    end = len(value) if end is None else end
    if not 0 <= start <= end <= len(value):
        raise ValueError(f"substring({start}, {end}) out of range for a string of {len(value)}")
    return value[start:end]


# Functions of the API server's CEL libraries that the rules call and this evaluator lacks.
LIBRARY_FUNCTIONS = {**quantity.CEL_FUNCTIONS, "substring": _substring}


@functools.cache
def _functions(cls: type) -> dict[str, Any]:
    """The library functions the class's rules call."""
    called = {name for _, program in _programs(cls) for name in program.functions()}
    return {name: function for name, function in LIBRARY_FUNCTIONS.items() if name in called}


def check(cls: type, value: dict[str, Any], path: str) -> None:
    """Refuse `value` (a section of class `cls`, as plain data) at the first rule it breaks."""
    programs = _programs(cls)
    if not programs:
        return
    # One context per section: turning the Python value into CEL values costs some
    # 30 times more than evaluating a rule on it.
    context = cel.Context(functions=_functions(cls))
    context.add_variable("self", value)
    for rule, program in programs:
        try:
            passed = program.execute(context) is True
        except (RuntimeError, TypeError, ValueError):
            # The API server refuses an object whose rule fails to evaluate, too.
            passed = False
        if not passed:
            raise SpecError(f"{path}{rule.get('fieldPath', '')}", rule["message"])
