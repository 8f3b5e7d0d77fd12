"""How long a resize takes, split into checkpoint, conversion and restart: the trainer's part of it.

    .venv/bin/python bench/resize.py                                  # tiny GPT, ZeRO 1, 2 ranks -> 4
    .venv/bin/python bench/resize.py --size mini --stage 3 --to 1

What the operator does on a resize, done here by hand with `kubespeed launch` (the pod's
entrypoint) on this machine: a run of `--from` ranks trains until step `--at`, then gets
SIGTERM, as a pod deleted with its grace period does; a run of `--to` ranks resumes from
the checkpoint written at SIGTERM and trains one step. Measured:

- checkpoint_s: SIGTERM to the launcher's exit (the ranks agree to stop at the next step
  boundary, write the checkpoint, exit 143);
- conversion_s: rank 0 of the new run converting the checkpoint to DeepSpeed's universal
  format (the `resume` metrics line's conversionSeconds; 0 at ZeRO stage 0 or the same size);
- restart_s: the new launcher's start to the end of its first step, less the conversion
  (Python, torch and DeepSpeed starting, the rendezvous, building the engine, loading).

Pods, scheduling and the operator's own reaction are not in it: on a cluster they add the
pod deletion and creation (bench/recovery.py measures a gang recreated by the operator).
Prints one JSON line with the settings and the machine's 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from kubespeed import checkpoints, metrics, wiring
from kubespeed.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def trainer_config(data: Path, size: str, stage: int) -> dict:
    return {
        "model": {"type": "gpt", "size": size},
        "data": {"train": str(data), "tokenizer": {"type": "char"}},
        "training": {"steps": 10_000, "globalBatchSize": 8, "microBatchSize": 2, "seqLength": 64, "logInterval": 1,
                     "evalInterval": 0, "seed": 7, "schedule": {"warmupSteps": 2}},
        "deepspeed": {"zeroStage": stage, "precision": "fp32", "compile": False},
        "checkpoint": {"interval": 100_000, "keep": 2, "exportWeights": False},
    }


def launch(config: Path, run_dir: Path, ranks: int, log: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "kubespeed_cli", "launch", "--nnodes", "1", "--node-rank", "0", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--", str(config), "--checkpoint-dir", str(run_dir),
               "--gpu", "false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def lines(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / checkpoints.METRICS_FILE
    return [r for r in metrics.read_jsonl(path) if r["kind"] == kind] if path.exists() else []


def wait(proc: subprocess.Popen, done, what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench/resize.py: {what} did not happen (exit code {proc.poll()})")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help="built-in GPT recipe (default tiny)")
    parser.add_argument("--stage", type=int, default=1, help="ZeRO stage (default 1)")
    parser.add_argument("--from", dest="start", type=int, default=2, help="ranks before the resize (default 2)")
    parser.add_argument("--to", type=int, default=4, help="ranks after it (default 4)")
    parser.add_argument("--at", type=int, default=5, help="the step after which SIGTERM comes (default 5)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kubespeed-bench-resize-") as folder:
        root = Path(folder)
        data = root / "text.txt"
        data.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
        config = root / "trainer.yaml"
        config.write_text(yaml.safe_dump(trainer_config(data, args.size, args.stage)))
        run_dir, log = root / "run", root / "launch.log"

        before = launch(config, run_dir, args.start, log)
        wait(before, lambda: any(r["step"] >= args.at for r in lines(run_dir, "train")), f"step {args.at}")
        sigterm = time.time()
        os.killpg(before.pid, signal.SIGTERM)
        code = before.wait()
        checkpoint_s = time.time() - sigterm
        if code != wiring.EXIT_PREEMPTED.code:
            raise SystemExit(f"bench/resize.py: the run stopped by SIGTERM exited {code}, see {log}")
        saved = lines(run_dir, "checkpoint")[-1]["step"]

        restarted = time.time()
        after = launch(config, run_dir, args.to, log, "--max-steps-this-run", "1")
        if after.wait() != 0:
            raise SystemExit(f"bench/resize.py: the resized run failed, see {log}")
        [resume] = lines(run_dir, "resume")
        [first] = [r for r in lines(run_dir, "train") if r["step"] == saved + 1]
        conversion_s = resume.get("conversionSeconds") or 0.0
    print(json.dumps({
        "bench": "resize",
        "settings": {"model": args.size, "zeroStage": args.stage, "ranks": [args.start, args.to], "globalBatchSize": 8,
                     "microBatchSize": 2, "seqLength": 64, "device": "cpu (gloo)", "sigtermAfterStep": args.at},
        "checkpoint_s": round(checkpoint_s, 2),
        "conversion_s": round(conversion_s, 2),
        "restart_s": round(first["time"] - restarted - conversion_s, 2),
        "total_s": round(first["time"] - sigterm, 2),
        "resumedAtStep": saved,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
