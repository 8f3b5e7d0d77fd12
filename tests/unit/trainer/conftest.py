"""Small assets for the trainer unit tests: a slice of tinyshakespeare and a data spec builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubespeed.spec.job import DataSpec, TokenizerSpec

SLICE_CHARS = 20_000


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_path: Path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")[:SLICE_CHARS]


@pytest.fixture
def text_file(tmp_path: Path, shakespeare_text: str) -> Path:
    path = tmp_path / "input.txt"
    path.write_text(shakespeare_text, encoding="utf-8")
    return path


def _data_spec(train: str | Path, tokenizer: str = "char", **fields) -> DataSpec:
    return DataSpec(train=str(train), tokenizer=TokenizerSpec(type=tokenizer, vocabSize=300), **fields)


@pytest.fixture(scope="session")
def data_spec():
    """`data_spec(train, tokenizer="char", **DataSpec fields)`."""
    return _data_spec


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and the tests share two cores with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
