"""The failing rank's own line reaches the pod's termination log (commands/failure.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from kubespeed import wiring
from kubespeed_trainer.commands import failure
from kubespeed_trainer.elastic import LAUNCH_DIR_ENV


def failed(tmp_path: Path, rank: int, exitcode: int, recorded: str | None = None) -> ProcessFailure:
    """What torch's elastic agent reads back of a failed rank: its exit, and the reply file the rank wrote."""
    error_file = tmp_path / f"error-{rank}.json"
    if recorded is not None:
        error_file.write_text(json.dumps({"message": recorded, "timestamp": 0}))
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


def test_a_rank_records_its_line_where_the_agent_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv(failure.ERROR_FILE_ENV, str(tmp_path / "error-0.json"))
    failure.record("spec.data: data source /data/nonexistent.txt does not exist")
    read_back = ProcessFailure(local_rank=0, pid=1, exitcode=65, error_file=str(tmp_path / "error-0.json"))
    assert failure.recorded(read_back) == "spec.data: data source /data/nonexistent.txt does not exist"


@pytest.mark.parametrize(
    "name, ranks, code, message",
    [
        ("the rank whose exit decided the pod's, not the one the agent stopped",
         [(0, -15, None), (1, 65, "spec.data: data source x does not exist")], 65, "rank 1: spec.data: data source x does not exist"),
        ("the first of several that agree", [(2, 64, "two"), (1, 64, "one")], 64, "rank 1: one"),
        ("a killed rank says what killed it", [(3, -9, None)], 75, "rank 3: killed by SIGKILL"),
        ("a crash without a line points at the log", [(0, 1, None)], 75, "rank 0: exited with code 1 without saying why (see the pod's log)"),
    ],
)
def test_the_termination_message_is_the_deciding_ranks_own_words(tmp_path, name, ranks, code, message):
    failures = {rank: failed(tmp_path, rank, exitcode, line) for rank, exitcode, line in ranks}
    assert failure.pick(failures, code) == message, name


def test_the_termination_log_gets_at_most_what_the_kubelet_reads(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    monkeypatch.setenv(wiring.ENV_TERMINATION_LOG, str(log))
    failure.write_termination_message("x" * 5000 + " the end")
    written = log.read_bytes()
    assert len(written) == failure.MAX_MESSAGE_BYTES and written.endswith(b" the end")


def test_without_a_termination_log_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(wiring.ENV_TERMINATION_LOG, raising=False)
    monkeypatch.chdir(tmp_path)
    failure.write_termination_message("why")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, code, kept",
    [
        ("a config error outlives the restart rounds", 64, True),
        ("a data error outlives the restart rounds", 65, True),
        ("a retryable failure is left to the restarts", 75, False),
    ],
)
def test_a_permanent_failure_is_kept_for_a_launcher_the_rendezvous_ends(tmp_path, monkeypatch, name, code, kept):
    monkeypatch.setenv(failure.ERROR_FILE_ENV, str(tmp_path / "error.json"))
    monkeypatch.setenv(LAUNCH_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "3")
    failure.record("spec.deepspeed.precision: fp16 is not supported on this device (cpu)", code)
    expected = (code, "rank 3: spec.deepspeed.precision: fp16 is not supported on this device (cpu)") if kept else None
    assert failure.permanent(str(tmp_path)) == expected, name
