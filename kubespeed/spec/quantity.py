"""Kubernetes resource quantities (`8`, `500m`, `64Gi`, `1e3`) as exact numbers, and CEL's quantity library.

The API server's CEL has a quantity library (`isQuantity`, `quantity`, and on a
quantity `isInteger`, `asInteger`, `compareTo`, `isLessThan`, `isGreaterThan`); the
spec's rules on resources use it, so `CEL_FUNCTIONS` gives the evaluator in
`rules` the same functions. A quantity value in CEL is carried here as
{"quantity": "<exact fraction>"}, which only these functions read.

Values are exact fractions, as resource.Quantity's are: `0.1` and `100m` are equal.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Any

# The API server's own schema for resource.Quantity: an integer, or a string of this form.
PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
_NUMBER = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")
SUFFIXES: dict[str, Fraction] = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 10**3), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}  # fmt: skip
BINARY_SUFFIXES = ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki")
INT64_MAX = 2**63 - 1


def is_quantity(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and re.fullmatch(PATTERN, str(value)) is not None


@functools.lru_cache(maxsize=1024)
def parse(value: int | str) -> Fraction:
    """The exact value of a quantity; ValueError for a string that is none. Cached: a cluster's
    jobs name a few quantities many times (the operator parses each job's, and builds each pod's)."""
    if not is_quantity(value):
        raise ValueError(f"not a quantity: {value!r}")
    number, suffix = _NUMBER.match(str(value)).groups()  # type: ignore[union-attr]
    if suffix[:1] in ("e", "E"):
        return Fraction(number) * Fraction(10) ** int(Fraction(suffix[1:]))
    return Fraction(number) * SUFFIXES[suffix]


def format_bytes(value: Fraction | int) -> str:
    """A whole number of bytes in the largest binary unit that divides it (`2Gi`, `1536Mi`, `1000`)."""
    count = int(value)
    for suffix in BINARY_SUFFIXES:
        unit = int(SUFFIXES[suffix])
        if count and count % unit == 0:
            return f"{count // unit}{suffix}"
    return str(count)


# ---------------------------------------------------------------- CEL's quantity library

def _wrap(value: Fraction) -> dict[str, str]:
    return {"quantity": str(value)}


@functools.lru_cache(maxsize=1024)
def _exact(text: str) -> Fraction:
    return Fraction(text)


def _value(quantity: dict[str, str]) -> Fraction:
    return _exact(quantity["quantity"])


def _compare(a: dict[str, str], b: dict[str, str]) -> int:
    x, y = _value(a), _value(b)
    return (x > y) - (x < y)


def _is_integer(quantity: dict[str, str]) -> bool:
    value = _value(quantity)
    return value.denominator == 1 and -INT64_MAX - 1 <= value <= INT64_MAX


def _as_integer(quantity: dict[str, str]) -> int:
    if not _is_integer(quantity):
        raise ValueError(f"cannot convert {quantity['quantity']} to an integer")
    return int(_value(quantity))


CEL_FUNCTIONS = {
    "isQuantity": lambda value: isinstance(value, str) and is_quantity(value),
    "quantity": lambda value: _wrap(parse(value)),
    "isInteger": _is_integer,
    "asInteger": _as_integer,
    "compareTo": _compare,
    "isLessThan": lambda a, b: _compare(a, b) < 0,
    "isGreaterThan": lambda a, b: _compare(a, b) > 0,
}
