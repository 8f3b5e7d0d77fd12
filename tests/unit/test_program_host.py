"""The program host runs on the standard library alone, starts the launcher from the pod's wiring,
serves progress in the operator's gauges, forwards SIGTERM and maps exit codes.

Processes here run the host with `python -I -S`: no site-packages, so neither kubespeed
nor anything else outside the standard library can be imported, as in a user's image.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kubespeed import metrics, program_host, wiring
from kubespeed.ports import free_port

HOST = Path(program_host.__file__)
BARE_PYTHON = [sys.executable, "-I", "-S"]


def test_a_bare_interpreter_cannot_import_kubespeed():
    assert subprocess.run([*BARE_PYTHON, "-c", "import kubespeed"], capture_output=True).returncode != 0


def test_install_copies_the_host_into_the_shared_folder(tmp_path):
    result = subprocess.run([*BARE_PYTHON, str(HOST), "--install", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / HOST.name).read_text() == HOST.read_text()


def test_the_gauges_and_exit_codes_are_the_ones_the_operator_reads():
    assert {key: metrics.GAUGES[key][0] for key in program_host.GAUGES} == program_host.GAUGES
    host = (program_host.EXIT_SUCCESS, program_host.EXIT_CONFIG_ERROR, program_host.EXIT_DATA_ERROR, program_host.EXIT_PREEMPTED, program_host.EXIT_RETRYABLE)
    assert host == tuple(e.code for e in (wiring.EXIT_SUCCESS, wiring.EXIT_CONFIG_ERROR, wiring.EXIT_DATA_ERROR, wiring.EXIT_PREEMPTED, wiring.EXIT_RETRYABLE))
    assert (program_host.RUN_DIR, program_host.METRICS_PATH) == (wiring.PROGRAM_RUN_DIR, wiring.METRICS_PATH)


WIRING = {"MASTER_ADDR": "job-0.job", "MASTER_PORT": "29500", "NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "2",
          "KUBESPEED_HOSTFILE": "/etc/kubespeed/hostfile", "KUBESPEED_JOB": "job", "KUBESPEED_MAX_RESTARTS": "3",
          "KUBESPEED_RENDEZVOUS_TIMEOUT": "600"}  # fmt: skip


@pytest.mark.parametrize(
    "launcher, module, expected",
    [
        ("deepspeed", False, ["py", "-u", "-m", "deepspeed.launcher.runner", "--hostfile", "/etc/kubespeed/hostfile", "--no_ssh",
                              "--node_rank=1", "--master_addr=job-0.job", "--master_port=29500", "train.py", "--x"]),
        ("deepspeed", True, ["py", "-u", "-m", "deepspeed.launcher.runner", "--hostfile", "/etc/kubespeed/hostfile", "--no_ssh",
                             "--node_rank=1", "--master_addr=job-0.job", "--master_port=29500", "--module", "train.py", "--x"]),
        ("torchrun", False, ["py", "-u", "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d",
                             "--rdzv-endpoint=job-0.job:29500", "--rdzv-id=job", "--rdzv-conf=is_host=0,join_timeout=600,read_timeout=600",
                             "--local-addr=job-0.job~0001", "--max-restarts=3", "--monitor-interval=0.5", "train.py", "--x"]),
        ("none", False, ["train.py", "--x"]),
    ],
)  # fmt: skip
def test_the_launcher_command_comes_from_the_pod_wiring(launcher, module, expected):
    assert program_host.launcher_argv(launcher, module, ["train.py", "--x"], "py", WIRING) == expected


@pytest.mark.parametrize(
    "returncode, terminated, code",
    [(0, False, 0), (64, False, 64), (65, False, 65), (2, False, 64), (1, False, 75), (-9, False, 75), (247, False, 75), (1, True, 143), (0, True, 143)],
    ids=["success", "the program's config error", "the program's data error", "a usage error or no such script", "an exception", "killed",
         "a rank killed, through DeepSpeed's launcher", "stopped by SIGTERM", "stopped by SIGTERM, exiting 0"],
)
def test_exit_codes_tell_the_operator_whether_a_retry_can_help(returncode, terminated, code):
    assert program_host.exit_code(returncode, terminated) == code


def test_the_config_handed_over_switches_on_deepspeeds_csv_monitor_unless_the_user_set_one(tmp_path):
    source = tmp_path / "ds.json"
    source.write_text(json.dumps({"train_batch_size": 8}))
    path, config = program_host.prepare_config(str(source), True, str(tmp_path))
    assert json.loads(Path(path).read_text()) == config
    assert config["csv_monitor"] == {"enabled": True, "output_path": str(tmp_path / "monitor"), "job_name": "kubespeed"}
    source.write_text(json.dumps({"csv_monitor": {"enabled": False}}))
    assert program_host.prepare_config(str(source), True, str(tmp_path))[1]["csv_monitor"] == {"enabled": False}


@pytest.mark.parametrize(
    "config, world, batch",
    [({"train_batch_size": 32}, 4, 32), ({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3}, 4, 24),
     ({"train_micro_batch_size_per_gpu": 2}, 4, 8), ({"train_batch_size": "auto"}, 4, None)],
    ids=["stated", "micro x accumulation x world", "micro x world", "Hugging Face's auto"],
)  # fmt: skip
def test_samples_per_step_come_from_the_config(config, world, batch):
    assert program_host.batch_size(config, world) == batch


def test_progress_reads_the_monitor_in_steps_the_progress_file_and_the_latest_checkpoint(tmp_path):
    monitor, progress_file, checkpoints = tmp_path / "monitor", tmp_path / "progress.jsonl", tmp_path / "ckpt"
    monitor.mkdir()
    (checkpoints / "global_step20").mkdir(parents=True)
    (checkpoints / "latest").write_text("global_step20")
    (monitor / program_host.MONITOR_LR_FILE).write_text("step,lr\n8,0.1\n16,0.09\n24,0.0")  # the last row is still being written
    progress = program_host.Progress(str(monitor), str(progress_file), 8, 100, str(checkpoints), "2")
    values = progress.read()
    assert (values["step"], values["lr"], values["totalSteps"], values["checkpointStep"], values["attempt"]) == (2, 0.09, 100, 20, 2)
    progress_file.write_text(json.dumps({"step": 5, "loss": 1.5, "tokensPerSecond": 900, "mystery": 1}) + "\n")
    values = progress.read()
    assert (values["step"], values["loss"], values["tokensPerSecond"]) == (5, 1.5, 900)
    assert "mystery" not in values
    parsed = metrics.parse_prometheus(progress.prometheus())
    assert (parsed["step"], parsed["loss"], parsed["checkpointStep"]) == (5, 1.5, 20)


def run_host(tmp_path: Path, program: str, *flags: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", wiring.ENV_METRICS_PORT: str(port), wiring.ENV_PROGRESS_FILE: str(tmp_path / "progress.jsonl"),
           wiring.ENV_CHECKPOINT_DIR: str(tmp_path), wiring.ENV_ATTEMPT: "1"}  # fmt: skip
    argv = [*BARE_PYTHON, str(HOST), "--launcher", "none", *flags, "--", *BARE_PYTHON, "-c", program]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), port


def scrape(port: int) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{wiring.METRICS_PATH}", timeout=5) as response:
                return metrics.parse_prometheus(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# A program of a custom loop: it reports a step and a loss through the documented progress file, then waits for `go`.
REPORTING_PROGRAM = """
import json, os, sys, time
with open(os.environ["KUBESPEED_PROGRESS_FILE"], "a") as f:
    f.write(json.dumps({"step": 7, "loss": 2.5}) + "\\n")
while not os.path.exists(os.path.join(os.environ["KUBESPEED_CHECKPOINT_DIR"], "go")):
    time.sleep(0.05)
sys.exit(int(open(os.path.join(os.environ["KUBESPEED_CHECKPOINT_DIR"], "go")).read()))
"""


@pytest.mark.parametrize("program_exit, host_exit", [(0, 0), (3, 75)])
def test_a_programs_reported_progress_is_served_until_it_exits(tmp_path, program_exit, host_exit):
    host, port = run_host(tmp_path, REPORTING_PROGRAM, "--total-steps", "10")
    try:
        deadline = time.monotonic() + 30
        while scrape(port).get("step") != 7 and time.monotonic() < deadline:
            time.sleep(0.1)
        served = scrape(port)
        assert (served["step"], served["loss"], served["totalSteps"], served["attempt"]) == (7, 2.5, 10, 1)
        (tmp_path / "go").write_text(str(program_exit))
        assert host.wait(timeout=30) == host_exit, host.stdout.read()
    finally:
        host.kill()


SIGTERM_PROGRAM = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (open(os.path.join(os.environ["KUBESPEED_CHECKPOINT_DIR"], "saved"), "w").close(), sys.exit(0)))
open(os.path.join(os.environ["KUBESPEED_CHECKPOINT_DIR"], "ready"), "w").close()
while True:
    time.sleep(0.05)
"""


def test_sigterm_reaches_the_program_which_saves_and_the_host_exits_143(tmp_path):
    host, _ = run_host(tmp_path, SIGTERM_PROGRAM)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        host.send_signal(signal.SIGTERM)
        assert host.wait(timeout=30) == wiring.EXIT_PREEMPTED.code, host.stdout.read()
        assert (tmp_path / "saved").exists()
    finally:
        host.kill()
