"""Data sources: files, directories, JSON lines and the builtin text the installation carries."""

from __future__ import annotations

import json

import pytest

from kubespeed_trainer.data import builtin, sources
from kubespeed_trainer.data.builtin import BUILTINS, python_docs


def test_directory_reads_its_files_in_sorted_order_skipping_hidden_ones(tmp_path, data_spec):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / ".hidden").write_text("never")
    records = list(sources.read_records(str(tmp_path), data_spec(tmp_path)))
    assert [r.text for r in records] == ["first", "second", "third"]
    assert all(r.ends_document for r in records)


def test_big_text_file_is_read_in_chunks_that_end_one_document(tmp_path, data_spec, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_CHARS", 100)
    text = "".join(f"line {i}\n" for i in range(100))
    (tmp_path / "big.txt").write_text(text)
    records = list(sources.read_records(str(tmp_path / "big.txt"), data_spec(tmp_path / "big.txt")))
    assert "".join(r.text for r in records) == text
    assert [r.ends_document for r in records] == [False] * (len(records) - 1) + [True]


@pytest.mark.parametrize(
    "line, fields, expected",
    [
        ({"text": "hello"}, {}, ("hello", None)),
        ({"body": "hello"}, {"textField": "body"}, ("hello", None)),
        ({"prompt": "Q?", "response": "A."}, {}, ("Q?", "A.")),
        ({"q": "Q?", "a": "A."}, {"promptField": "q", "responseField": "a"}, ("Q?", "A.")),
    ],
    ids=["text field", "renamed text field", "prompt and response", "renamed prompt and response"],
)
def test_jsonl_records_take_the_configured_fields(tmp_path, data_spec, line, fields, expected):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(line) + "\n\n")
    [record] = sources.read_records(str(path), data_spec(path, format="jsonl", **fields))
    assert (record.text, record.response) == expected


def test_jsonl_record_without_the_fields_is_refused_naming_the_line(tmp_path, data_spec):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2"):
        list(sources.read_records(str(path), data_spec(path, format="jsonl")))


@pytest.mark.parametrize("source", ["builtin:shakespeare", "builtin:tinyshakespeare", "builtin:nope"])
def test_unknown_builtin_is_refused_listing_the_known_ones(source, data_spec):
    with pytest.raises(ValueError, match="builtin:python-docs"):
        list(sources.read_records(source, data_spec(source)))


def test_builtins_are_the_python_docs_and_nothing_vendored():
    assert set(BUILTINS) | set(sources.BUILTIN_PAIRS) == {"python-docs", "python-docs-qa"}


def test_python_docs_are_stdlib_docstrings_and_deterministic():
    modules = {"json", "textwrap", "json.decoder"}
    first, second = list(python_docs(modules)), list(python_docs(modules))
    assert first == second
    assert [doc.splitlines()[0] for doc in first] == ["json", "json.decoder", "textwrap"]
    json_doc = first[0]
    assert "JSON (JavaScript Object Notation)" in json_doc
    assert "dumps(obj, *, skipkeys=False" in json_doc


def test_python_docs_are_parsed_once_per_machine_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    builtin._all_python_docs.cache_clear()
    parsed = list(python_docs())
    assert [p.name for p in (tmp_path / "kubespeed").iterdir()] == [builtin._cache_file().name]

    def no_parsing():
        raise AssertionError("parsed the standard library again")

    monkeypatch.setattr(builtin, "_parse_python_docs", no_parsing)
    builtin._all_python_docs.cache_clear()
    try:
        assert list(python_docs()) == parsed
    finally:
        builtin._all_python_docs.cache_clear()


def test_fingerprint_changes_when_a_file_changes(tmp_path, data_spec):
    path = tmp_path / "a.txt"
    path.write_text("one")
    before = sources.fingerprint(str(path), data_spec(path))
    assert sources.fingerprint(str(path), data_spec(path)) == before
    path.write_text("one two")
    assert sources.fingerprint(str(path), data_spec(path)) != before
