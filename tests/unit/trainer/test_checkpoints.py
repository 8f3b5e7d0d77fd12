"""Which checkpoints count and which are pruned: the layout on disk, no processes."""

from __future__ import annotations

from kubespeed import checkpoints
from kubespeed_trainer.engine import checkpoint


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
