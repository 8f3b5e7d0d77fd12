"""Tokenize a data source once into memory-mappable token shards, safely when ranks race.

Layout of a prepared directory:

    index.json              what is here and what made it (see below)
    tokenizer/              the tokenizer that made the shards (`load_tokenizer` reads it)
    train-00000.bin         tokens, numpy uint16 (vocabularies up to 65,536) or uint32
    train-00000.mask.bin    uint8 loss mask, 1 where a token carries loss (prompt/response data only)
    validation-00000.bin    when `data.validation` is a separate source

index.json holds the dtype, each stream's shards and token counts, the token
ranges of the `train` and `validation` splits, the tokenizer's fingerprint and
the sources' fingerprints. Documents are joined with the tokenizer's eos token.
When `data.validation` is unset, the validation split is the last
`validationSplit` of the training tokens: a token range, so it is the same on
every run and disjoint from training.

Re-running with the same sources, tokenizer and split reuses the directory.
Writing happens in a temporary sibling that is renamed into place, under an
exclusive lock file beside it, so concurrent callers (ranks on one node, or
nodes sharing a volume) produce one complete result and nobody ever reads a
half-written one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kubespeed.spec.job import DataSpec
from kubespeed_trainer.data import sources
from kubespeed_trainer.data.tokenizer import Tokenizer, build_tokenizer, load_tokenizer

INDEX_FILE = "index.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
SHARD_TOKENS = 1 << 26  # 128 MiB of uint16 per shard file
ENCODE_BATCH_CHARS = 1 << 20


def prepare_dataset(data: DataSpec, tokenizer: Tokenizer | None, out_dir: str | Path, *, seq_length: int,
                    shard_tokens: int = SHARD_TOKENS) -> Path:
    """Token shards for `data` in out_dir (or, for `format: tokens`, the prepared directory `data.train` itself).

    With `tokenizer=None` the tokenizer is built from `data.tokenizer` (learned
    from the training text for char and bpe) and saved with the shards; read it
    back with `prepared_tokenizer(path)`, so a learned tokenizer is trained once.
    Pass a tokenizer to tokenize with exactly that one: fine-tuning a char or
    bpe model needs the `initFrom` run's tokenizer, not one learned afresh from
    the fine-tuning text, or the ids would not match the trained embedding.
    """
    if data.format == "tokens":
        if data.validation:
            raise ValueError("data.validation does not apply to format tokens: the prepared directory carries its own split")
        return _check(Path(data.train), tokenizer.fingerprint if tokenizer is not None else None, seq_length)
    out = Path(out_dir)
    key = _key(data, tokenizer)
    fingerprint = tokenizer.fingerprint if tokenizer is not None else None
    if _matches(out, key, fingerprint):
        return _check(out, fingerprint, seq_length)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent / f".{out.name}.lock"):
        if not _matches(out, key, fingerprint):
            tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
            try:
                _write(data, tokenizer or build_tokenizer(data.tokenizer, sources.training_text(data)), tmp, key,
                       shard_tokens)
                _replace(tmp, out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return _check(out, fingerprint, seq_length)


def prepared_tokenizer(prepared_dir: str | Path) -> Tokenizer:
    return load_tokenizer(Path(prepared_dir) / TOKENIZER_DIR)


def read_index(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{prepared_dir} holds no prepared token shards ({INDEX_FILE} missing)")
    return json.loads(path.read_text())


def _key(data: DataSpec, tokenizer: Tokenizer | None) -> str:
    """What the shards depend on: the sources, the split and how the tokenizer is made.

    A learned tokenizer (char, bpe) is named by its recipe, which the training
    text determines; a fixed one (byte, pretrained) by its fingerprint. So the
    key is the same whether the caller passes the tokenizer or lets it be built.
    """
    if data.tokenizer.type in ("char", "bpe"):
        tok = f"learned:{data.tokenizer.type}:{data.tokenizer.vocabSize}"
    else:
        tok = (tokenizer or build_tokenizer(data.tokenizer, None)).fingerprint  # cheap: nothing to learn
    parts = [FORMAT_VERSION, sources.fingerprint(data.train, data),
             sources.fingerprint(data.validation, data) if data.validation else None, data.validationSplit, tok]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _matches(out: Path, key: str, fingerprint: str | None) -> bool:
    try:
        index = read_index(out)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return index.get("key") == key and (fingerprint is None or index.get("tokenizer") == fingerprint)


def _check(prepared: Path, fingerprint: str | None, seq_length: int) -> Path:
    index = read_index(prepared)
    if index.get("version") != FORMAT_VERSION:
        raise ValueError(f"{prepared}: prepared with format version {index.get('version')}, this trainer reads {FORMAT_VERSION}")
    if fingerprint is not None and index["tokenizer"] != fingerprint:
        raise ValueError(f"{prepared}: the shards were made by a different tokenizer than the configured one")
    train = index["splits"]["train"]
    if train["end"] - train["start"] < seq_length + 1:
        raise ValueError(f"{prepared}: {train['end'] - train['start']} training tokens cannot fill one sequence of {seq_length} + 1")
    return prepared


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _replace(tmp: Path, out: Path) -> None:
    """Move a finished directory into place; an old one (other inputs) is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _StreamWriter:
    """Appends tokens (and loss-mask bytes) to numbered shard files of at most `shard_tokens` tokens."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.name, self.dtype, self.shard_tokens = directory, name, dtype, shard_tokens
        self.shards: list[dict] = []
        self.files: tuple | None = None
        self.any_masked = False

    def append(self, tokens: np.ndarray, mask: np.ndarray) -> None:
        self.any_masked |= not bool(mask.all())
        while len(tokens):
            if self.files is None or self.shards[-1]["count"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["count"]
            self.files[0].write(tokens[:room].astype(self.dtype).tobytes())
            self.files[1].write(mask[:room].astype(np.uint8).tobytes())
            self.shards[-1]["count"] += len(tokens[:room])
            tokens, mask = tokens[room:], mask[room:]

    def _open_next(self) -> None:
        self.close()
        stem = f"{self.name}-{len(self.shards):05d}"
        self.shards.append({"tokens": f"{stem}.bin", "mask": f"{stem}.mask.bin", "count": 0})
        self.files = (open(self.directory / f"{stem}.bin", "wb"), open(self.directory / f"{stem}.mask.bin", "wb"))

    def close(self) -> None:
        if self.files is not None:
            for fh in self.files:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
            self.files = None

    def finish(self) -> tuple[list[dict], int]:
        """Closes the files; masks that mark every token are dropped (plain pre-training data needs none)."""
        self.close()
        for shard in self.shards:
            if not self.any_masked:
                (self.directory / shard["mask"]).unlink()
                shard["mask"] = None
        return self.shards, sum(s["count"] for s in self.shards)


def _write(data: DataSpec, tokenizer: Tokenizer, out: Path, key: str, shard_tokens: int) -> None:
    out.mkdir(parents=True)
    tokenizer.save(out / TOKENIZER_DIR)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    streams = {"train": _tokenize("train", data.train, data, tokenizer, out, dtype, shard_tokens)}
    if data.validation:
        streams["validation"] = _tokenize("validation", data.validation, data, tokenizer, out, dtype, shard_tokens)
    total = sum(s["count"] for s in streams["train"])
    if data.validation:
        splits = {"train": {"stream": "train", "start": 0, "end": total},
                  "validation": {"stream": "validation", "start": 0, "end": sum(s["count"] for s in streams["validation"])}}
    else:
        held_out = math.ceil(total * data.validationSplit)
        splits = {"train": {"stream": "train", "start": 0, "end": total - held_out},
                  "validation": {"stream": "train", "start": total - held_out, "end": total}}
    index = {
        "version": FORMAT_VERSION,
        "key": key,
        "dtype": dtype.name,
        "vocabSize": tokenizer.vocab_size,
        "eosId": tokenizer.eos_id,
        "tokenizer": tokenizer.fingerprint,
        "sources": {"train": data.train, "validation": data.validation, "validationSplit": data.validationSplit},
        "streams": streams,
        "splits": splits,
    }
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _tokenize(name: str, source: str, data: DataSpec, tokenizer: Tokenizer, out: Path, dtype: np.dtype,
              shard_tokens: int) -> list[dict]:
    writer = _StreamWriter(out, name, dtype, shard_tokens)
    batch: list[sources.Record] = []
    size = 0
    for record in sources.read_records(source, data):
        batch.append(record)
        size += len(record.text) + len(record.response or "")
        if size >= ENCODE_BATCH_CHARS:
            _encode_into(writer, batch, tokenizer)
            batch, size = [], 0
    _encode_into(writer, batch, tokenizer)
    shards, count = writer.finish()
    if count == 0:
        raise ValueError(f"data source {source} holds no text")
    return shards


def _encode_into(writer: _StreamWriter, batch: list[sources.Record], tokenizer: Tokenizer) -> None:
    """Prompt tokens carry no loss; response tokens and the eos that ends a response do, so the model learns to stop."""
    if not batch:
        return
    texts = tokenizer.encode_batch([r.text for r in batch])
    responses = iter(tokenizer.encode_batch([r.response for r in batch if r.response is not None]))
    for record, ids in zip(batch, texts):
        masked = [True] * len(ids)
        if record.response is not None:
            response = next(responses)
            masked = [False] * len(ids) + [True] * len(response)
            ids = ids + response
        if record.ends_document:
            ids = ids + [tokenizer.eos_id]
            masked.append(True)
        writer.append(np.asarray(ids, dtype=np.int64), np.asarray(masked, dtype=bool))
