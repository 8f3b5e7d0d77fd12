"""Packing and sharding lose and repeat no token; the sampler resumes at exactly the next sample."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
import torch

from kubespeed_trainer.data import ResumableSampler, TokenDataset, batches, prepare_dataset, read_index

SEQ = 16


@pytest.fixture
def prepared(text_file, tmp_path, data_spec):
    return prepare_dataset(data_spec(text_file, validationSplit=0.1), None, tmp_path / "prepared", seq_length=SEQ)


def split_tokens(prepared, split: str) -> np.ndarray:
    index = read_index(prepared)
    bounds = index["splits"][split]
    stream = np.concatenate([np.fromfile(prepared / s["tokens"], dtype=index["dtype"]) for s in index["streams"][bounds["stream"]]])
    return stream[bounds["start"]:bounds["end"]]


@pytest.mark.parametrize("split", ["train", "validation"])
def test_packed_samples_hold_every_token_of_the_split_once_as_input(prepared, split):
    dataset = TokenDataset(prepared, split, SEQ)
    tokens = split_tokens(prepared, split)
    assert len(dataset) == (len(tokens) - 1) // SEQ
    samples = [dataset[i]["input_ids"] for i in range(len(dataset))]
    assert all(s.shape == (SEQ + 1,) and s.dtype == torch.int64 for s in samples)
    inputs = torch.cat([s[:-1] for s in samples]).numpy()
    assert np.array_equal(inputs, tokens[:len(dataset) * SEQ])
    # the extra last token of each sample is the next sample's first: a target, never a lost or repeated input
    assert all(a[-1] == b[0] for a, b in itertools.pairwise(samples))


def test_train_and_validation_splits_are_disjoint_token_ranges(prepared):
    splits = read_index(prepared)["splits"]
    assert splits["train"]["end"] <= splits["validation"]["start"]
    assert len(TokenDataset(prepared, "validation", SEQ)) > 0


def test_index_outside_the_dataset_is_refused(prepared):
    dataset = TokenDataset(prepared, "train", SEQ)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def global_stream(num_samples, world_size, micro, seed, rounds):
    """The indices all ranks draw, round by round and rank by rank."""
    samplers = [ResumableSampler(num_samples, rank=r, world_size=world_size, seed=seed, micro_batch_size=micro)
                for r in range(world_size)]
    out = []
    for _ in range(rounds):
        for sampler in samplers:
            out += sampler.next_indices()
    return out, samplers


@pytest.mark.parametrize("num_samples, world_size, micro", [(24, 1, 4), (24, 2, 3), (24, 4, 2), (25, 3, 2), (7, 2, 4)],
                         ids=["one rank", "two ranks even", "four ranks even", "three ranks uneven", "batch bigger than half"])
def test_each_epoch_gives_every_sample_to_exactly_one_rank(num_samples, world_size, micro):
    epochs = 3
    rounds = -(-epochs * num_samples // (world_size * micro))
    stream, _ = global_stream(num_samples, world_size, micro, seed=7, rounds=rounds)
    for epoch in range(epochs):
        assert sorted(stream[epoch * num_samples:(epoch + 1) * num_samples]) == list(range(num_samples)), epoch


def test_epochs_are_different_seeded_permutations():
    sampler = ResumableSampler(50, rank=0, world_size=1, seed=3, micro_batch_size=5)
    same = ResumableSampler(50, rank=0, world_size=1, seed=3, micro_batch_size=5)
    other_seed = ResumableSampler(50, rank=0, world_size=1, seed=4, micro_batch_size=5)
    assert not torch.equal(sampler.permutation(0), sampler.permutation(1))
    assert torch.equal(sampler.permutation(1), same.permutation(1))
    assert not torch.equal(sampler.permutation(0), other_seed.permutation(0))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("stop_after", [0, 1, 5, 13])
def test_resume_continues_with_exactly_the_samples_of_the_uninterrupted_run(world_size, stop_after):
    num_samples, micro, total = 21, 2, 20
    for rank in range(world_size):
        uninterrupted = ResumableSampler(num_samples, rank=rank, world_size=world_size, seed=11, micro_batch_size=micro)
        expected = [uninterrupted.next_indices() for _ in range(total)]
        first = ResumableSampler(num_samples, rank=rank, world_size=world_size, seed=11, micro_batch_size=micro)
        got = [first.next_indices() for _ in range(stop_after)]
        resumed = ResumableSampler(num_samples, rank=rank, world_size=world_size, seed=11, micro_batch_size=micro)
        resumed.load_state_dict(first.state_dict())
        got += [resumed.next_indices() for _ in range(total - stop_after)]
        assert got == expected


def test_state_is_the_same_on_every_rank():
    _, samplers = global_stream(30, 3, 4, seed=0, rounds=7)
    assert len({tuple(s.state_dict().items()) for s in samplers}) == 1
    assert samplers[0].state_dict() == {"epoch": 2, "position": 84 - 60}


def test_resume_with_another_world_size_continues_the_same_global_order():
    before, samplers = global_stream(40, 2, 3, seed=5, rounds=5)
    after = []
    resumed = [ResumableSampler(40, rank=r, world_size=4, seed=5, micro_batch_size=3) for r in range(4)]
    for sampler in resumed:
        sampler.load_state_dict(samplers[0].state_dict())
    for _ in range(4):
        for sampler in resumed:
            after += sampler.next_indices()
    uninterrupted, _ = global_stream(40, 2, 3, seed=5, rounds=5 + 8)
    assert before + after == uninterrupted


def optimizer_steps(samplers: list[ResumableSampler], steps: int, global_batch: int, micro: int) -> list[list[int]]:
    """The samples of each optimizer step, rank by rank, as the trainer draws them: the global batch in micro
    batches, gradient accumulation = global batch / (micro x ranks)."""
    accumulation = global_batch // (micro * len(samplers))
    return [[i for _ in range(accumulation) for sampler in samplers for i in sampler.next_indices()] for _ in range(steps)]


def test_a_resize_from_2_to_4_to_1_ranks_trains_every_step_on_the_samples_of_a_run_that_stays_at_2():
    num_samples, global_batch, micro, seed = 37, 8, 2, 9
    fixed = optimizer_steps([ResumableSampler(num_samples, rank=r, world_size=2, seed=seed, micro_batch_size=micro) for r in range(2)],
                            12, global_batch, micro)
    state = {"epoch": 0, "position": 0}
    resized: list[list[int]] = []
    for ranks, steps in ((2, 4), (4, 4), (1, 4)):
        samplers = [ResumableSampler(num_samples, rank=r, world_size=ranks, seed=seed, micro_batch_size=micro) for r in range(ranks)]
        for sampler in samplers:
            sampler.load_state_dict(state)
        resized += optimizer_steps(samplers, steps, global_batch, micro)
        state = samplers[0].state_dict()
        assert samplers[0].drawn() == global_batch * len(resized)
    # Within a step the ranks split the batch differently; the step's samples, and the global order, are the same.
    assert [sorted(step) for step in resized] == [sorted(step) for step in fixed]
    stream, _ = global_stream(num_samples, 1, global_batch, seed=seed, rounds=12)
    assert [sorted(stream[k * global_batch:(k + 1) * global_batch]) for k in range(12)] == [sorted(step) for step in resized]


def test_batches_stack_samples_and_cover_an_epoch_across_ranks(prepared):
    dataset = TokenDataset(prepared, "train", SEQ)
    world_size, micro = 2, 4
    streams = [batches(dataset, ResumableSampler(len(dataset), rank=r, world_size=world_size, seed=1, micro_batch_size=micro))
               for r in range(world_size)]
    rows = []
    while len(rows) < len(dataset):
        for stream in streams:
            batch = next(stream)
            assert batch["input_ids"].shape == (micro, SEQ + 1)
            assert batch["loss_mask"] is None
            rows += [tuple(row.tolist()) for row in batch["input_ids"]]
    every_sample = [tuple(dataset[i]["input_ids"].tolist()) for i in range(len(dataset))]
    assert Counter(rows[:len(dataset)]) == Counter(every_sample)


@pytest.mark.parametrize("shard_tokens", [1000, 1 << 26])
def test_a_gathered_micro_batch_is_its_samples_stacked_across_shards_and_with_masks(text_file, tmp_path, data_spec, shard_tokens):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("\n".join(json.dumps({"prompt": f"q{i} " * 3, "response": f"a{i} " * 5}) for i in range(200)))
    for name, spec in (("text", data_spec(text_file, validationSplit=0.1)), ("sft", data_spec(sft, format="jsonl", validationSplit=0.1))):
        prepared = prepare_dataset(spec, None, tmp_path / name / str(shard_tokens), seq_length=SEQ, shard_tokens=shard_tokens)
        dataset = TokenDataset(prepared, "train", SEQ)
        rng = np.random.default_rng(0)
        for indices in [list(range(len(dataset))), rng.permutation(len(dataset))[:12].tolist(), [len(dataset) - 1, 0], []]:
            got = dataset.gather(indices)
            items = [dataset[i] for i in indices]
            want_ids = torch.stack([item["input_ids"] for item in items]) if items else torch.empty(0, SEQ + 1, dtype=torch.int64)
            assert got["input_ids"].dtype == torch.int64 and torch.equal(got["input_ids"].reshape(-1, SEQ + 1), want_ids)
            if name == "text":
                assert got["loss_mask"] is None
            elif items:
                assert got["loss_mask"].dtype == torch.bool
                assert torch.equal(got["loss_mask"], torch.stack([item["loss_mask"] for item in items]))
        with pytest.raises(IndexError, match=f"sample {len(dataset)} out of range"):
            dataset.gather([0, len(dataset)])


def test_loaded_state_outside_the_epoch_is_refused():
    sampler = ResumableSampler(10, rank=0, world_size=1, seed=0, micro_batch_size=2)
    with pytest.raises(ValueError, match="position"):
        sampler.load_state_dict({"epoch": 0, "position": 10})
