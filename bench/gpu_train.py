"""A ~1B-parameter built-in GPT on one GPU: bf16, ZeRO-2, through our DeepSpeed path; prints one JSON line.

    .venv/bin/python bench/gpu_train.py            # gpt-1b, one GPU
    .venv/bin/python bench/gpu_train.py --tiny     # the same code on the CPU with a tiny model (CI keeps it working)

It runs `kubespeed train` (one process) on random tokens (`byte` tokenizer over
generated text, so nothing is downloaded), and reports from rank 0's metrics:
tokens_per_s and mfu (against the GPU's dense bf16 peak, see
kubespeed_trainer.engine.device), averaged over the logged windows after the first,
plus peak GPU memory (torch.cuda.max_memory_allocated, from the trainer's `end`
line), the parameter count (its `start` line) and wall_s. The model runs as users
get it by default: compiled (deepspeed.compile), with attention through torch's
SDPA (flash attention on the GPU) and DeepSpeed's FusedAdam; the first logged
window, which holds compiling, is left out of the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def make_text(path: Path, chars: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + "      \n"
    path.write_text("".join(rng.choice(alphabet) for _ in range(chars)))


def config(data: Path, tiny: bool, steps: int) -> dict:
    if tiny:
        model = {"type": "gpt", "size": "tiny"}
        training = {"globalBatchSize": 4, "microBatchSize": 4, "seqLength": 32}
        precision = "bf16"
    else:
        model = {"type": "gpt", "size": "gpt-1b"}
        training = {"globalBatchSize": 16, "microBatchSize": 8, "seqLength": 1024}
        precision = "bf16"
    return {
        "model": model,
        "data": {"train": str(data), "validationSplit": 0.05, "tokenizer": {"type": "byte"}},
        "training": {**training, "steps": steps, "logInterval": max(1, steps // 5), "evalInterval": 0, "evalBatches": 1,
                     "optimizer": {"lr": 3e-4}, "schedule": {"warmupSteps": max(1, steps // 10)}},
        # No activation checkpointing: 1.3B parameters with ZeRO-2 state and these activations fit an
        # 80 GB H100 or 141 GB H200, and recomputing the forward would cost a third more compute per step.
        # The tiny CPU run leaves compiling out: its C++ kernels say nothing of the GPU's Triton ones.
        "deepspeed": {"zeroStage": 2, "precision": precision, "compile": not tiny},
        "checkpoint": {"interval": 10**8, "keep": 1, "exportWeights": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 50, tiny 10)")
    args = parser.parse_args()
    steps = args.steps or (10 if args.tiny else 50)
    with tempfile.TemporaryDirectory(prefix="kubespeed-gpu-bench-") as tmp:
        work = Path(tmp)
        data = work / "text.txt"
        make_text(data, 200_000 if args.tiny else 40_000_000)
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump(config(data, args.tiny, steps)))
        cmd = [sys.executable, "-m", "kubespeed_cli", "train", str(config_path), "--checkpoint-dir", str(work / "run"),
               "--gpu", "false" if args.tiny else "true"]
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=REPO).returncode
        wall = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {code}")
        lines = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in lines if r["kind"] == "train"][1:] or [r for r in lines if r["kind"] == "train"]
        start_line = next(r for r in lines if r["kind"] == "start")
        end_line = next(r for r in lines if r["kind"] == "end")

    def mean(key: str) -> float | None:
        values = [r[key] for r in train if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    mfu = mean("mfu")
    print(json.dumps({
        "model": "tiny" if args.tiny else "gpt-1b",
        "device": start_line["device"],
        "parameters": start_line["parameters"],
        "tokens_per_s": round(mean("tokensPerSecond") or 0.0, 1),
        "mfu": None if mfu is None else round(mfu, 4),
        "peak_gpu_memory_gb": end_line.get("peakGpuMemoryGb"),
        "final_loss": train[-1]["loss"] if train else None,
        "wall_s": round(wall, 1),
    }))


if __name__ == "__main__":
    main()
