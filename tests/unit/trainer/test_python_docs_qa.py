"""`builtin:python-docs-qa`: fine-tuning pairs generated from this interpreter's docstrings."""

from __future__ import annotations

import itertools

import pytest

from kubespeed_trainer.data import sources
from kubespeed_trainer.data.python_docs_qa import python_docs_qa

SOURCE = "builtin:python-docs-qa"


def test_pairs_ask_what_a_function_does_and_answer_with_its_docstring():
    pairs = dict(python_docs_qa())
    assert pairs["What does shutil.which(cmd, mode=os.F_OK | os.X_OK, path=None) do?\n"].startswith("Given a command, mode, and a PATH")
    assert all(p.startswith("What does ") and p.endswith(" do?\n") and r.endswith("\n") for p, r in pairs.items())
    assert not any(p.startswith("What does _") or "._" in p.split("(")[0] for p in pairs), "private names are left out"


def test_pairs_are_the_same_every_time():
    assert list(itertools.islice(python_docs_qa(), 50)) == list(itertools.islice(python_docs_qa(), 50))


def test_pairs_are_prompt_response_records(data_spec):
    first = next(sources.read_records(SOURCE, data_spec(SOURCE, format="jsonl")))
    assert first.text.startswith("What does ") and first.response


@pytest.mark.parametrize("source, fmt", [(SOURCE, "text"), ("builtin:python-docs", "jsonl")])
def test_builtin_in_the_wrong_format_is_refused_naming_the_right_one(data_spec, source, fmt):
    with pytest.raises(ValueError, match="needs data.format"):
        list(sources.read_records(source, data_spec(source, format=fmt)))
