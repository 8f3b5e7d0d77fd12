"""Tokenizers: text survives encode -> decode, saved tokenizers load back identical, learning is deterministic."""

from __future__ import annotations

import pytest

from kubespeed.spec.job import TokenizerSpec
from kubespeed_trainer.data.tokenizer import build_tokenizer, load_tokenizer

SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
UNICODE = "naïve café — 東京 🙂"


def bpe_saved_as_pretrained(text: str, tmp_path):
    """A pretrained tokenizer is any HF tokenizer directory; a saved BPE tokenizer is one."""
    build_tokenizer(TokenizerSpec(type="bpe", vocabSize=300), [text]).save(tmp_path / "hf")
    return build_tokenizer(TokenizerSpec(type="pretrained", path=str(tmp_path / "hf")), None)


BUILDERS = {
    "char": lambda text, tmp_path: build_tokenizer(TokenizerSpec(type="char"), [text]),
    "byte": lambda text, tmp_path: build_tokenizer(TokenizerSpec(type="byte"), None),
    "bpe": lambda text, tmp_path: build_tokenizer(TokenizerSpec(type="bpe", vocabSize=300), [text]),
    "pretrained": bpe_saved_as_pretrained,
}


@pytest.mark.parametrize("kind", BUILDERS)
def test_text_round_trips_through_encode_and_decode(kind, shakespeare_text, tmp_path):
    tokenizer = BUILDERS[kind](shakespeare_text, tmp_path)
    ids = tokenizer.encode(shakespeare_text[:2000])
    assert tokenizer.decode(ids) == shakespeare_text[:2000]
    assert all(0 <= i < tokenizer.vocab_size for i in ids)


@pytest.mark.parametrize("kind", ["byte", "bpe", "pretrained"])
def test_text_outside_the_training_set_round_trips_for_byte_level_tokenizers(kind, shakespeare_text, tmp_path):
    tokenizer = BUILDERS[kind](shakespeare_text, tmp_path)
    assert tokenizer.decode(tokenizer.encode(UNICODE)) == UNICODE


def test_char_tokenizer_maps_unseen_characters_to_unk():
    tokenizer = build_tokenizer(TokenizerSpec(type="char"), ["abc"])
    assert tokenizer.encode("abz") == [0, 1, tokenizer.unk_id]


def test_char_vocabulary_is_the_sorted_training_characters_then_specials(shakespeare_text):
    tokenizer = build_tokenizer(TokenizerSpec(type="char"), [shakespeare_text])
    chars = sorted(set(shakespeare_text))
    assert tokenizer.encode("".join(chars)) == list(range(len(chars)))
    assert (tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id) == (len(chars), len(chars) + 1, len(chars) + 2)
    assert tokenizer.vocab_size == len(chars) + 4


@pytest.mark.parametrize("kind", BUILDERS)
def test_saved_tokenizer_loads_back_identical(kind, shakespeare_text, tmp_path):
    tokenizer = BUILDERS[kind](shakespeare_text, tmp_path)
    loaded = load_tokenizer(tokenizer.save(tmp_path / "saved"))
    assert loaded.kind == tokenizer.kind
    assert loaded.encode(SAMPLE) == tokenizer.encode(SAMPLE)
    assert (loaded.vocab_size, loaded.eos_id, loaded.pad_id, loaded.mask_id) == (
        tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id)
    assert loaded.fingerprint == tokenizer.fingerprint


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_learned_tokenizers_are_deterministic_for_the_same_text(kind, shakespeare_text, tmp_path):
    first, second = (BUILDERS[kind](shakespeare_text, tmp_path) for _ in range(2))
    assert first.fingerprint == second.fingerprint
    assert first.encode(SAMPLE) == second.encode(SAMPLE)


def test_special_ids_are_distinct_and_inside_the_vocabulary(shakespeare_text, tmp_path):
    for kind, build in BUILDERS.items():
        tokenizer = build(shakespeare_text, tmp_path)
        specials = {tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id}
        assert len(specials) == 3, kind
        assert all(0 <= i < tokenizer.vocab_size for i in specials), kind


def test_bpe_learns_the_requested_vocabulary_size(shakespeare_text):
    assert build_tokenizer(TokenizerSpec(type="bpe", vocabSize=400), [shakespeare_text]).vocab_size == 400


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_learned_tokenizer_without_training_text_is_refused(kind):
    with pytest.raises(ValueError, match="training text"):
        build_tokenizer(TokenizerSpec(type=kind), None)


def test_plain_hugging_face_directory_loads_as_pretrained(shakespeare_text, tmp_path):
    from transformers import PreTrainedTokenizerFast

    bpe = build_tokenizer(TokenizerSpec(type="bpe", vocabSize=300), [shakespeare_text])
    PreTrainedTokenizerFast(tokenizer_object=bpe.tokenizer, eos_token="<|endoftext|>").save_pretrained(tmp_path / "hf")
    loaded = load_tokenizer(tmp_path / "hf")
    assert loaded.kind == "pretrained"
    assert loaded.encode(SAMPLE) == bpe.encode(SAMPLE)
    assert loaded.eos_id == bpe.eos_id
    assert loaded.pad_id == loaded.mask_id == loaded.eos_id  # neither exists: eos stands in
