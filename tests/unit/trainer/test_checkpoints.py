"""Which checkpoints count and which are pruned: the layout on disk, no processes."""

from __future__ import annotations

import json

import pytest

from kubespeed import checkpoints
from kubespeed_trainer.engine import checkpoint, reshard


def make_tag(directory, step: int, complete: bool) -> str:
    tag = checkpoints.tag_for(step)
    (directory / tag).mkdir(parents=True)
    if complete:
        (directory / tag / checkpoints.COMPLETE_MARKER).write_text("{}")
    return tag


def test_only_complete_checkpoints_count_and_latest_falls_back_to_the_newest_complete(tmp_path):
    make_tag(tmp_path, 100, True)
    newest = make_tag(tmp_path, 200, True)
    half_written = make_tag(tmp_path, 300, False)
    (tmp_path / checkpoints.LATEST_FILE).write_text(half_written)
    assert checkpoints.complete_tags(tmp_path) == [checkpoints.tag_for(100), newest]
    assert checkpoints.latest_complete(tmp_path) == newest


def test_an_empty_or_missing_directory_has_no_checkpoint(tmp_path):
    assert checkpoints.latest_complete(tmp_path / "absent") is None
    assert checkpoints.latest_complete(tmp_path) is None


def test_prune_keeps_the_newest_complete_and_drops_leftovers(tmp_path):
    for step in (10, 20, 30):
        make_tag(tmp_path, step, True)
    make_tag(tmp_path, 25, False)
    deleted = checkpoint.prune(tmp_path, keep=2)
    assert sorted(deleted) == [checkpoints.tag_for(10), checkpoints.tag_for(25)]
    assert checkpoints.complete_tags(tmp_path) == [checkpoints.tag_for(20), checkpoints.tag_for(30)]


def test_tags_sort_by_step_as_text_too():
    tags = [checkpoints.tag_for(s) for s in (9, 10, 100)]
    assert sorted(tags) == tags and [checkpoints.step_of(t) for t in tags] == [9, 10, 100]


@pytest.mark.parametrize(
    "name, stage, marker, size, converted",
    [
        ("ZeRO 0 holds the whole optimizer once", 0, {"dataParallelSize": 2}, 4, False),
        ("ZeRO 1 at the size it was saved", 1, {"dataParallelSize": 2}, 2, False),
        ("ZeRO 1 at another size", 1, {"dataParallelSize": 2}, 4, True),
        ("ZeRO 3 shrunk to one rank", 3, {"dataParallelSize": 4}, 1, True),
        ("a checkpoint from before sizes were recorded, by its world size", 2, {"worldSize": 2}, 4, True),
        ("a checkpoint that says nothing", 2, {}, 4, False),
    ],
)
def test_a_checkpoint_is_converted_only_when_its_shards_do_not_fit_the_new_size(tmp_path, name, stage, marker, size, converted):
    tag = make_tag(tmp_path, 100, True)
    (tmp_path / tag / checkpoints.COMPLETE_MARKER).write_text(json.dumps(marker))
    saved = reshard.saved_data_parallel_size(tmp_path, tag, pipeline_stages=1)
    assert reshard.needs_universal(stage, saved, size) == converted, name
