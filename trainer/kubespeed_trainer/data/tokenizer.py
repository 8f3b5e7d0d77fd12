"""Tokenizers: characters, UTF-8 bytes, a byte-level BPE trained here, or one from a local directory.

All four share one small interface (`Tokenizer`) and three special ids the
objectives need: `eos_id` separates documents when data is packed, `pad_id`
fills, `mask_id` replaces corrupted spans for the denoising objective.

- char: the sorted characters of the training text, then `<|endoftext|>`,
  `<|pad|>`, `<|mask|>`, `<|unk|>` (characters never seen map to unk), so the
  ids of the characters are nanoGPT's shakespeare-char ids.
- byte: ids 0-255 are bytes, then the three specials; nothing is unknown.
- bpe: Hugging Face `tokenizers` byte-level BPE trained on the training text,
  specials first (ids 0, 1, 2). Training is deterministic for the same text.
- pretrained: a Hugging Face tokenizer directory, read with `local_files_only`.
  A tokenizer without a mask token uses its unk token, else its eos token, as
  the mask (so the vocabulary, and the model's embeddings, keep their size).

`save(dir)` writes `kubespeed_tokenizer.json` (which kind) next to the
tokenizer's own files; bpe and pretrained directories are also plain HF
tokenizer directories. `fingerprint` hashes what `save` writes, so prepared
token shards can tell whether they were made by this tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import tokenizers

from kubespeed.spec.job import TokenizerSpec

META_FILE = "kubespeed_tokenizer.json"
EOS, PAD, MASK, UNK = "<|endoftext|>", "<|pad|>", "<|mask|>", "<|unk|>"


class Tokenizer(ABC):
    kind: str
    vocab_size: int
    eos_id: int
    pad_id: int
    mask_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def _save_files(self, directory: Path) -> None: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_files(directory)
        (directory / META_FILE).write_text(json.dumps({"type": self.kind}) + "\n")
        return directory

    @cached_property  # tokenizers never change after construction
    def fingerprint(self) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            digest = hashlib.sha256()
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self.ids = {c: i for i, c in enumerate(self.chars)}
        self.specials = [EOS, PAD, MASK, UNK]
        self.eos_id, self.pad_id, self.mask_id, self.unk_id = range(len(self.chars), len(self.chars) + 4)
        self.vocab_size = len(self.chars) + len(self.specials)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(seen)

    def encode(self, text: str) -> list[int]:
        unk, ids = self.unk_id, self.ids
        return [ids.get(c, unk) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else self.specials[i - n] for i in ids)

    def _save_files(self, directory: Path) -> None:
        (directory / "chars.json").write_text(json.dumps(self.chars, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> CharTokenizer:
        return cls(json.loads((directory / "chars.json").read_text(encoding="utf-8")))


class ByteTokenizer(Tokenizer):
    kind = "byte"
    eos_id, pad_id, mask_id = 256, 257, 258
    vocab_size = 259
    specials = {256: EOS, 257: PAD, 258: MASK}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            parts.append(self.specials[i])
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def _save_files(self, directory: Path) -> None:
        """Nothing to save: the byte tokenizer is fully described by its kind."""


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style pre-tokenization, no unknown tokens) from Hugging Face `tokenizers`."""

    kind = "bpe"

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_id, self.pad_id, self.mask_id = (tokenizer.token_to_id(t) for t in (EOS, PAD, MASK))
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
        tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD, MASK], show_progress=False,
                                                 initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def _save_files(self, directory: Path) -> None:
        self.tokenizer.save(str(directory / "tokenizer.json"))
        # Also an ordinary HF tokenizer directory, so an export can ship it for AutoTokenizer.
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS,
                  "pad_token": PAD, "mask_token": MASK, "model_max_length": 1_000_000_000_000}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> BPETokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json")))


class PretrainedTokenizer(Tokenizer):
    kind = "pretrained"

    def __init__(self, tokenizer) -> None:  # a transformers PreTrainedTokenizerBase
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = tokenizer.sep_token_id
        if eos is None:
            raise ValueError("the pretrained tokenizer has no eos (or sep) token to separate documents")
        self.eos_id = eos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        mask = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
        self.mask_id = mask if mask is not None else eos
        self.vocab_size = len(tokenizer)

    @classmethod
    def load(cls, directory: str | Path) -> PretrainedTokenizer:
        # transformers takes about a second to import, and every rank imports this module; only pretrained tokenizers need it.
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(directory), local_files_only=True))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def _save_files(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory))


def build_tokenizer(spec: TokenizerSpec, training_text: Iterable[str] | None) -> Tokenizer:
    """The spec's tokenizer; char and bpe learn from `training_text` (an iterable of documents)."""
    if spec.type == "byte":
        return ByteTokenizer()
    if spec.type == "pretrained":
        if not spec.path:
            raise ValueError("a pretrained tokenizer needs a directory (tokenizer.path)")
        return PretrainedTokenizer.load(spec.path)
    if training_text is None:
        raise ValueError(f"a {spec.type} tokenizer is learned from the training text, and none was given")
    if spec.type == "char":
        return CharTokenizer.train(training_text)
    if spec.type == "bpe":
        return BPETokenizer.train(training_text, spec.vocabSize)
    raise ValueError(f"unknown tokenizer type {spec.type!r}")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """A tokenizer saved by `Tokenizer.save`, or any Hugging Face tokenizer directory."""
    directory = Path(directory)
    meta = directory / META_FILE
    kind = json.loads(meta.read_text())["type"] if meta.exists() else "pretrained"
    if kind == "char":
        return CharTokenizer.load(directory)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.load(directory)
    if kind == "pretrained":
        return PretrainedTokenizer.load(directory)
    raise ValueError(f"{meta}: unknown tokenizer type {kind!r}")
