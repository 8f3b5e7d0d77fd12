"""prepare_dataset: tokens land in shards once, reuse is exact, racing preparers leave one valid result."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from kubespeed_trainer.data import TokenDataset, prepare_dataset, prepared_tokenizer, read_index
from kubespeed_trainer.data.prepare import INDEX_FILE
from kubespeed_trainer.data.tokenizer import build_tokenizer


def stream_tokens(prepared: Path, stream: str) -> np.ndarray:
    index = read_index(prepared)
    return np.concatenate([np.fromfile(prepared / s["tokens"], dtype=index["dtype"]) for s in index["streams"][stream]])


def test_shards_hold_the_documents_joined_by_eos(tmp_path, data_spec):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("abc")
    (tmp_path / "docs" / "b.txt").write_text("ba")
    prepared = prepare_dataset(data_spec(tmp_path / "docs"), None, tmp_path / "out", seq_length=2)
    tokenizer = prepared_tokenizer(prepared)
    eos = tokenizer.eos_id
    assert stream_tokens(prepared, "train").tolist() == [0, 1, 2, eos, 1, 0, eos]
    assert read_index(prepared)["dtype"] == "uint16"


def test_many_small_shards_hold_the_same_tokens_as_one(text_file, tmp_path, data_spec):
    one = prepare_dataset(data_spec(text_file), None, tmp_path / "one", seq_length=16)
    many = prepare_dataset(data_spec(text_file), None, tmp_path / "many", seq_length=16, shard_tokens=1000)
    assert len(read_index(many)["streams"]["train"]) > 10
    assert np.array_equal(stream_tokens(one, "train"), stream_tokens(many, "train"))
    for split in ("train", "validation"):
        a, b = TokenDataset(one, split, 16), TokenDataset(many, split, 16)
        assert len(a) == len(b)
        assert all(np.array_equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(len(a)))


def test_second_run_with_the_same_inputs_reuses_the_shards(text_file, tmp_path, data_spec):
    first = prepare_dataset(data_spec(text_file), None, tmp_path / "out", seq_length=16)
    stamp = (first / INDEX_FILE).stat().st_mtime_ns
    again = prepare_dataset(data_spec(text_file), prepared_tokenizer(first), tmp_path / "out", seq_length=16)
    assert again == first
    assert (first / INDEX_FILE).stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "change",
    [
        lambda path, spec: (path.write_text(path.read_text() + "more text\n"), spec)[1],
        lambda path, spec: spec(path, validationSplit=0.2),
        lambda path, spec: spec(path, tokenizer="byte"),
    ],
    ids=["source changed", "split changed", "tokenizer changed"],
)
def test_changed_inputs_replace_the_shards(text_file, tmp_path, data_spec, change):
    first = prepare_dataset(data_spec(text_file), None, tmp_path / "out", seq_length=16)
    key = read_index(first)["key"]
    changed = change(text_file, data_spec)
    spec = changed if not callable(changed) else data_spec(text_file)
    prepare_dataset(spec, None, tmp_path / "out", seq_length=16)
    assert read_index(tmp_path / "out")["key"] != key
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.") and not p.name.endswith(".lock")] == []


def _prepare_in_child(args) -> str:
    spec, out = args
    return str(prepare_dataset(spec, None, out, seq_length=16))


def test_racing_preparers_produce_one_valid_result(text_file, tmp_path, data_spec):
    spec = data_spec(text_file, tokenizer="bpe")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        paths = pool.map(_prepare_in_child, [(spec, tmp_path / "out")] * 3)
    assert set(paths) == {str(tmp_path / "out")}
    index = read_index(tmp_path / "out")
    assert index["tokenizer"] == prepared_tokenizer(tmp_path / "out").fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "input.txt", "out"]


def test_validation_split_is_the_tail_of_the_training_tokens(text_file, tmp_path, data_spec):
    prepared = prepare_dataset(data_spec(text_file, validationSplit=0.25), None, tmp_path / "out", seq_length=16)
    splits = read_index(prepared)["splits"]
    total = len(stream_tokens(prepared, "train"))
    assert splits["train"] == {"stream": "train", "start": 0, "end": total - (total + 3) // 4}
    assert splits["validation"] == {"stream": "train", "start": splits["train"]["end"], "end": total}


def test_separate_validation_source_is_its_own_stream(text_file, tmp_path, data_spec):
    held_out = tmp_path / "val.txt"
    held_out.write_text(text_file.read_text()[:500])
    prepared = prepare_dataset(data_spec(text_file, validation=str(held_out)), None, tmp_path / "out", seq_length=16)
    tokenizer = prepared_tokenizer(prepared)
    assert stream_tokens(prepared, "validation").tolist() == tokenizer.encode(held_out.read_text()) + [tokenizer.eos_id]
    assert read_index(prepared)["splits"]["train"]["end"] == len(stream_tokens(prepared, "train"))


def test_prompt_response_data_gets_a_loss_mask_on_response_and_eos(tmp_path, data_spec):
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"prompt": "ab", "response": "c"}, {"text": "ba"}]))
    prepared = prepare_dataset(data_spec(path, format="jsonl", validationSplit=0.0), None, tmp_path / "out", seq_length=2)
    shard = read_index(prepared)["streams"]["train"][0]
    mask = np.fromfile(prepared / shard["mask"], dtype=np.uint8).tolist()
    #            a  b  c  eos  b  a  eos
    assert mask == [0, 0, 1, 1, 1, 1, 1]


def test_plain_text_has_no_loss_mask(text_file, tmp_path, data_spec):
    prepared = prepare_dataset(data_spec(text_file), None, tmp_path / "out", seq_length=16)
    assert all(s["mask"] is None for s in read_index(prepared)["streams"]["train"])
    assert TokenDataset(prepared, "train", 16)[0]["loss_mask"] is None


def test_prepared_directory_is_read_back_as_format_tokens(text_file, tmp_path, data_spec):
    prepared = prepare_dataset(data_spec(text_file), None, tmp_path / "out", seq_length=16)
    tokenizer = prepared_tokenizer(prepared)
    assert prepare_dataset(data_spec(prepared, format="tokens"), tokenizer, tmp_path / "unused", seq_length=16) == prepared
    other = build_tokenizer(data_spec(prepared, tokenizer="byte").tokenizer, None)
    with pytest.raises(ValueError, match="different tokenizer"):
        prepare_dataset(data_spec(prepared, format="tokens"), other, tmp_path / "unused", seq_length=16)


def test_too_little_text_for_one_sequence_is_refused(tmp_path, data_spec):
    path = tmp_path / "short.txt"
    path.write_text("tiny")
    with pytest.raises(ValueError, match="cannot fill one sequence"):
        prepare_dataset(data_spec(path), None, tmp_path / "out", seq_length=64)
