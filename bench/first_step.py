"""Time to the first step: `kubespeed local` on a job against the same trainer config started by hand with torchrun.

    .venv/bin/python bench/first_step.py                                   # the quickstart, 5 rounds
    .venv/bin/python bench/first_step.py manifests/examples/llama-tiny.yaml --rounds 3

Two ways to start the job's first pod, one after the other in each round (the
order alternating from round to round), each in a fresh run folder:
- `kubespeed_local`: `kubespeed local JOB --fresh`, everything of ours around
  the trainer (the job's pods built by the operator's builder, the pod's
  launcher, rendezvous, the progress reader);
- `torchrun`: `torchrun --nproc-per-node <procsPerNode> -m kubespeed_trainer.commands.train`
  with the job's trainer config (as `kubespeed render` puts it in the ConfigMap)
  and nothing of ours around it: DeepSpeed started by hand.

Both run `training.steps` = `--steps` (default 10) with no checkpoint before the
end; what is measured ends at the first step. seconds_to_first_step is from
starting the command to the end of rank 0's first step, as rank 0's own
`startup` metrics line has it (its process start and the seconds of each
phase); `phases` is that line's breakdown, with `launch` the seconds before rank
0's process started. One warm-up run of each comes first, uncounted, so both
find the same caches (the parsed builtin text, the page cache). Printed as one
JSON line: each way's median and all rounds, the ratio of medians with its
spread over rounds (round by round, ours over torchrun), and the machine's
1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from kubespeed import checkpoints, metrics
from kubespeed.ports import free_port
from kubespeed.spec import to_dict
from kubespeed_cli.local.command import load_local_job, visible_gpus

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "manifests" / "examples" / "quickstart.yaml"


def first_step(run_dir: Path, started: float) -> dict:
    """Seconds from `started` to the end of rank 0's first step, and the phases before it."""
    [line] = [r for r in metrics.read_jsonl(run_dir / checkpoints.METRICS_FILE) if r["kind"] == "startup"][:1]
    phases = {"launch": line["processStart"] - started, **line["seconds"]}
    return {"seconds_to_first_step": round(sum(phases.values()), 2), "phases": {k: round(v, 2) for k, v in phases.items()}}


def run(cmd: list[str], run_dir: Path, log: Path) -> dict:
    started = time.time()
    with open(log, "ab") as out:
        code = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}; see {log}")
    return first_step(run_dir, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", nargs="?", type=Path, default=QUICKSTART)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    steps = [f"training.steps={args.steps}", f"checkpoint.interval={args.steps}"]
    job, spec = load_local_job(str(args.job), steps)
    name = job["metadata"]["name"]
    gpu = spec.gpu and visible_gpus() >= spec.procsPerNode  # as kubespeed local decides
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kubespeed-first-step-") as tmp:
        work = Path(tmp)
        config = work / "trainer.yaml"
        config.write_text(yaml.safe_dump(to_dict(spec.trainer_config()), sort_keys=False))
        sets = [arg for s in steps for arg in ("--set", s)]

        def ours() -> dict:
            cmd = [sys.executable, "-m", "kubespeed_cli", "local", str(args.job.resolve()), "--run-dir", str(work / "local"),
                   "--fresh", "--no-progress", *sets]
            return run(cmd, work / "local" / name / "checkpoints", work / "local.log")

        def by_hand() -> dict:
            run_dir = work / "torchrun"
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(spec.procsPerNode),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                   "-m", "kubespeed_trainer.commands.train", str(config), "--checkpoint-dir", str(run_dir), "--gpu", str(gpu).lower()]
            return run(cmd, run_dir, work / "torchrun.log")

        ours(), by_hand()
        rounds: dict[str, list[dict]] = {"kubespeed_local": [], "torchrun": []}
        for i in range(args.rounds):
            pair = [("kubespeed_local", ours), ("torchrun", by_hand)]
            for key, fn in pair if i % 2 == 0 else reversed(pair):
                rounds[key].append(fn())

    def summary(results: list[dict]) -> dict:
        seconds = [r["seconds_to_first_step"] for r in results]
        phases = {p: round(statistics.median(r["phases"][p] for r in results), 2) for p in results[0]["phases"]}
        return {"median_s": round(statistics.median(seconds), 2), "rounds_s": seconds, "median_phases": phases}

    ratios = [o["seconds_to_first_step"] / t["seconds_to_first_step"] for o, t in zip(rounds["kubespeed_local"], rounds["torchrun"])]
    ours_summary, theirs = summary(rounds["kubespeed_local"]), summary(rounds["torchrun"])
    print(json.dumps({
        "job": name, "ranks": spec.nodes * spec.procsPerNode, "rounds": args.rounds, "cpus": len(os.sched_getaffinity(0)),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "kubespeed_local": ours_summary, "torchrun": theirs,
        "ratio_of_medians": round(ours_summary["median_s"] / theirs["median_s"], 3),
        "ratio_by_round": {"min": round(min(ratios), 3), "median": round(statistics.median(ratios), 3), "max": round(max(ratios), 3)},
    }))


if __name__ == "__main__":
    main()
