"""Resource quantities read exactly as Kubernetes reads them, and the CEL quantity functions the spec's rules call."""

from fractions import Fraction

import pytest

from kubespeed.spec import quantity
from kubespeed.spec.rules import cel

PARSED = [
    ("an integer", 8, Fraction(8)),
    ("milli", "500m", Fraction(1, 2)),
    ("a decimal", "0.5", Fraction(1, 2)),
    ("binary giga", "64Gi", Fraction(64 * 2**30)),
    ("decimal giga", "2G", Fraction(2 * 10**9)),
    ("an exponent", "1e3", Fraction(1000)),
    ("a negative one", "-1Ki", Fraction(-1024)),
    ("nano", "1n", Fraction(1, 10**9)),
]


@pytest.mark.parametrize("what, text, value", PARSED, ids=[p[0] for p in PARSED])
def test_quantities_parse_exactly(what, text, value):
    assert quantity.parse(text) == value, what


@pytest.mark.parametrize("text", ["lots", "1.5.2", "Gi", "200K", "1 Gi", True])
def test_what_is_no_quantity_is_refused(text):
    assert not quantity.is_quantity(text)
    with pytest.raises(ValueError):
        quantity.parse(text)


@pytest.mark.parametrize(
    "value, text",
    [(2 * 2**30, "2Gi"), (1536 * 2**20, "1536Mi"), (3 * 2**40, "3Ti"), (500_000_000, "500000000"), (Fraction(7, 2), "3")],
)
def test_byte_counts_are_written_in_the_largest_binary_unit_that_divides_them(value, text):
    assert quantity.format_bytes(value) == text


EXPRESSIONS = [
    ("equal in other units", "quantity('100m').compareTo(quantity('0.1')) == 0", True),
    ("less than", "quantity('1Gi').isLessThan(quantity('1025Mi'))", True),
    ("greater than", "quantity('1G').isGreaterThan(quantity('1Gi'))", False),
    ("a whole number", "quantity('2k').isInteger() && quantity('2k').asInteger() == 2000", True),
    ("not a whole number", "quantity('1500m').isInteger()", False),
    ("isQuantity on a word", "isQuantity('three')", False),
]


@pytest.mark.parametrize("what, expression, result", EXPRESSIONS, ids=[e[0] for e in EXPRESSIONS])
def test_cel_quantity_library_answers_as_the_api_servers(what, expression, result):
    context = cel.Context(functions=quantity.CEL_FUNCTIONS)
    assert cel.compile(expression).execute(context) is result, what
