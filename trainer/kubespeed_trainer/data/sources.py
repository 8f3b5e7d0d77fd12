"""Where training text comes from: a file, a directory of files, or `builtin:<name>`.

A source yields `Record`s. Plain text (`format: text`) makes each file one
document, read in chunks of about a MiB at line ends so big files never sit in
memory whole. JSON lines (`format: jsonl`) make each line one document: the
`textField` for pre-training, or a `promptField`/`responseField` pair for
fine-tuning. A directory is its files (hidden ones skipped) in sorted order.
The builtin texts are described in `data/builtin.py`, the builtin pairs in `data/python_docs_qa.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubespeed.spec.job import BUILTIN_DATA_PREFIX, DataSpec
from kubespeed_trainer.data.builtin import BUILTINS
from kubespeed_trainer.data.python_docs_qa import python_docs_qa, python_docs_qa_fingerprint

# Builtin prompt/response pairs (`data.format: jsonl`), for fine-tuning; see data/python_docs_qa.py.
BUILTIN_PAIRS = {"python-docs-qa": (python_docs_qa, python_docs_qa_fingerprint)}
CHUNK_CHARS = 1 << 20


@dataclass(frozen=True)
class Record:
    """A piece of a document: `text` (the prompt when `response` is set); the document ends after it unless told."""

    text: str
    response: str | None = None
    ends_document: bool = True


def source_files(source: str) -> list[Path]:
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not files:
            raise FileNotFoundError(f"data source {source} is an empty directory")
        return sorted(files, key=lambda p: p.relative_to(path).as_posix())
    raise FileNotFoundError(f"data source {source} does not exist")


def read_records(source: str, data: DataSpec) -> Iterator[Record]:
    if source.startswith(BUILTIN_DATA_PREFIX):
        pairs = source.removeprefix(BUILTIN_DATA_PREFIX) in BUILTIN_PAIRS
        kind, wanted = ("prompt/response pairs", "jsonl") if pairs else ("plain text", "text")
        if data.format != wanted:
            raise ValueError(f"{source} is {kind}; it needs data.format {wanted}, not {data.format}")
        read, _ = _builtin(source)
        for item in read():
            yield Record(item[0], response=item[1]) if pairs else Record(item)
        return
    if data.format == "tokens":
        raise ValueError("token shards are read by TokenDataset, not as records")
    for path in source_files(source):
        if data.format == "jsonl":
            yield from _jsonl_records(path, data)
        else:
            yield from _text_records(path)


def training_text(data: DataSpec) -> Iterator[str]:
    """The training documents' text, to learn a char or BPE tokenizer from (prompts and responses both)."""
    for record in read_records(data.train, data):
        yield record.text if record.response is None else record.text + record.response


def fingerprint(source: str, data: DataSpec) -> str:
    """Changes when the source's files (names, sizes, modification times) or how they are read changes; reads no content."""
    digest = hashlib.sha256(json.dumps([data.format, data.textField, data.promptField, data.responseField]).encode())
    if source.startswith(BUILTIN_DATA_PREFIX):
        digest.update(_builtin(source)[1]().encode())
    else:
        root = Path(source)
        for path in source_files(source):
            stat = path.stat()
            rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def _builtin(source: str):
    name = source.removeprefix(BUILTIN_DATA_PREFIX)
    known = {**BUILTINS, **BUILTIN_PAIRS}
    if name not in known:
        raise ValueError(f"unknown builtin data {source!r}; known: {', '.join(BUILTIN_DATA_PREFIX + n for n in known)}")
    return known[name]


def _text_records(path: Path) -> Iterator[Record]:
    chunk: list[str] = []
    size = 0
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            chunk.append(line)
            size += len(line)
            if size >= CHUNK_CHARS:
                yield Record("".join(chunk), ends_document=False)
                chunk, size = [], 0
    yield Record("".join(chunk))


def _jsonl_records(path: Path, data: DataSpec) -> Iterator[Record]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON: {err}") from err
            if isinstance(obj, dict) and isinstance(obj.get(data.textField), str):
                yield Record(obj[data.textField])
            elif isinstance(obj, dict) and isinstance(obj.get(data.promptField), str) and isinstance(obj.get(data.responseField), str):
                yield Record(obj[data.promptField], response=obj[data.responseField])
            else:
                raise ValueError(f"{path}:{number}: needs a string {data.textField!r}, or {data.promptField!r} and {data.responseField!r}")
