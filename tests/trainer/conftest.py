"""Multi-process trainer tests: real DeepSpeed over gloo, started by `kubespeed launch`, on a tiny GPT.

    def test_x(trainer_job):
        job = trainer_job(deepspeed={"zeroStage": 2})
        result = job.launch(ranks=2)
        assert result.code == 0 and result.losses()

Every process a test starts runs in its own session and is killed as a group
when the test ends, passes or fails; directories are pytest's tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from kubespeed.ports import free_port

DATA_CHARS = 60_000
RUN_TIMEOUT_S = 240


def tiny_config(data: Path, **sections: dict) -> dict:
    """12 steps of a 2-layer GPT on 32-character sequences; sections merge over these defaults.

    Uncompiled: compiling costs more than 12 steps save (test_training.py has a compiled run).
    """
    config = {
        "model": {"type": "gpt", "size": "tiny"},
        "data": {"train": str(data), "tokenizer": {"type": "char"}},
        "training": {"steps": 12, "globalBatchSize": 8, "microBatchSize": 2, "seqLength": 32, "logInterval": 1,
                     "evalInterval": 0, "evalBatches": 2, "seed": 7,
                     "optimizer": {"lr": 3e-3}, "schedule": {"warmupSteps": 2, "minLr": 3e-4}},
        "deepspeed": {"zeroStage": 0, "precision": "fp32", "compile": False},
        "checkpoint": {"interval": 100, "keep": 2, "exportWeights": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


@dataclass
class Result:
    code: int
    output: str
    run_dir: Path

    def metrics(self, kind: str = "train") -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [line for line in lines if line["kind"] == kind]

    def losses(self) -> dict[int, float]:
        """Training loss by step; a resumed run's lines replace the earlier ones for the same step."""
        return {line["step"]: line["loss"] for line in self.metrics("train")}


@dataclass
class Job:
    config_path: Path
    run_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, ranks: int, *, nnodes: int = 1, node_rank: int = 0, port: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
        return [sys.executable, "-m", "kubespeed_cli", "launch", "--nnodes", str(nnodes), "--node-rank", str(node_rank),
                "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1", "--master-port", str(port or free_port()),
                "--", str(self.config_path), "--checkpoint-dir", str(self.run_dir), "--gpu", "false", *extra]

    def start(self, ranks: int, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Start `kubespeed launch` with `ranks` ranks; `env` adds to the environment of the pod it plays."""
        # TORCHINDUCTOR_*: this process's Inductor, once imported, writes its own cache directory into the
        # environment, and a pod's trainer would then keep its kernels there instead of beside its checkpoints.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("KUBESPEED_", "MASTER_", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHINDUCTOR_"))}
        env = {**inherited, "OMP_NUM_THREADS": "1", **(env or {})}
        proc = subprocess.Popen(self.command(ranks, **kwargs), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        self.processes.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> Result:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
            output, _ = proc.communicate()
            pytest.fail(f"kubespeed launch did not finish in {timeout}s:\n{output[-4000:]}")
        return Result(proc.returncode, output, self.run_dir)

    def launch(self, ranks: int = 2, **kwargs) -> Result:
        return self.finish(self.start(ranks, **kwargs))

    def wait_for_step(self, step: int, timeout: float = RUN_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line["step"] >= step for line in Result(0, "", self.run_dir).metrics("train")):
                return
            if all(p.poll() is not None for p in self.processes):
                pytest.fail("the run ended before reaching step {step}")
            time.sleep(0.2)
        pytest.fail(f"step {step} not reached in {timeout}s")


def kill(proc: subprocess.Popen) -> None:
    """Kill the launcher and every rank it started (they share its session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture(scope="session")
def cpu_fp16_refused() -> str | None:
    """Why DeepSpeed's CPU accelerator refuses fp16 on this machine (the trainer's own check), None where it trains fp16."""
    code = ("from kubespeed_trainer.engine import device; device.select_accelerator(False); "
            "from kubespeed_trainer.engine import accelerator; print(accelerator.unsupported_precision('fp16') or '')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else None


@pytest.fixture(scope="module")
def world_of_one() -> Iterator[None]:
    """The trainer's world of one, in this process: DeepSpeed's engine, scaler and overflow check work through its process group."""
    import torch.distributed as dist

    from kubespeed_trainer.engine import device

    saved = dict(os.environ)
    device.select_accelerator(False)
    from kubespeed_trainer.engine import accelerator  # imports deepspeed, which picks its accelerator at import

    accelerator.init_distributed(False)
    yield
    dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory: pytest.TempPathFactory, shakespeare_path: Path) -> Path:
    path = tmp_path_factory.mktemp("data") / "shakespeare-slice.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:DATA_CHARS], encoding="utf-8")
    return path


def _job_factory(directory: Path, data: Path) -> tuple:
    jobs: list[Job] = []

    def make(name: str = "run", **sections: dict) -> Job:
        config_path = directory / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(tiny_config(data, **sections)))
        job = Job(config_path, directory / name)
        jobs.append(job)
        return job

    return make, jobs


def _kill_all(jobs: list[Job]) -> None:
    for job in jobs:
        for proc in job.processes:
            # Killed by group even after a clean exit: a rank the launcher lost track of must not linger.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc.poll() is None:
                proc.wait()


@pytest.fixture
def trainer_job(tmp_path: Path, tiny_text: Path) -> Iterator:
    """`trainer_job(name="run", **sections) -> Job`; processes are killed at teardown."""
    make, jobs = _job_factory(tmp_path, tiny_text)
    yield make
    _kill_all(jobs)


@pytest.fixture(scope="session")
def uninterrupted_runs(tmp_path_factory: pytest.TempPathFactory, tiny_text: Path) -> Iterator:
    """`uninterrupted_runs(zero_stage) -> Result`: one finished 2-rank run per ZeRO stage (with export), shared by tests."""
    make, jobs = _job_factory(tmp_path_factory.mktemp("uninterrupted"), tiny_text)
    results: dict[int, Result] = {}

    def get(stage: int) -> Result:
        if stage not in results:
            results[stage] = make(f"zero{stage}", deepspeed={"zeroStage": stage}, checkpoint={"exportWeights": True}).launch(ranks=2)
        return results[stage]

    yield get
    _kill_all(jobs)
